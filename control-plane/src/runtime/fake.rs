//! An in-memory [`ContainerRuntime`] for unit tests of lifecycle logic, with switchable failures. It
//! runs nothing: tests of real behaviour use a private containerd.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use std::collections::HashMap as Map;

use super::mount::Mounted;
use super::{ContainerConfig, ContainerRuntime, Image, ImageConfig, RuntimeError, SnapshotInfo, TaskState};

/// The fake runtime.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    containers: Mutex<HashMap<String, TaskState>>,
    /// Container id → the snapshot key it runs on.
    roots: Mutex<HashMap<String, String>>,
    snapshots: Mutex<HashMap<String, SnapshotInfo>>,
    next_pid: AtomicU32,
    /// Make the next creates fail.
    pub fail_create: AtomicBool,
    /// Make the next starts fail.
    pub fail_start: AtomicBool,
}

impl FakeRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskState>> {
        crate::sync::lock(&self.containers)
    }

    /// Ids of the containers that exist.
    pub fn containers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    fn snaps(&self) -> std::sync::MutexGuard<'_, HashMap<String, SnapshotInfo>> {
        crate::sync::lock(&self.snapshots)
    }

    fn roots(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        crate::sync::lock(&self.roots)
    }

    /// Keys of the snapshots that exist.
    pub fn snapshot_keys(&self) -> Vec<String> {
        let mut v: Vec<String> = self.snaps().keys().cloned().collect();
        v.sort();
        v
    }

    fn add_snapshot(&self, key: &str, parent: &str, committed: bool, labels: Map<String, String>) -> SnapshotInfo {
        let info = SnapshotInfo {
            key: key.into(),
            parent: parent.into(),
            committed,
            labels,
            created_at_ms: crate::time::now_ms(),
        };
        self.snaps().insert(key.into(), info.clone());
        info
    }

    fn failure(op: &str) -> RuntimeError {
        RuntimeError::Failed { op: op.into(), source: super::Reply::new("Injected", "injected failure") }
    }
}

impl ContainerRuntime for FakeRuntime {
    async fn install_image(&self, source: &super::source::ImageSource) -> Result<Image, RuntimeError> {
        Ok(Image {
            name: source.name.clone(),
            manifest_digest: source.manifest.digest.clone(),
            chain_id: "sha256:fake".into(),
            config: ImageConfig::default(),
        })
    }

    async fn import_image(&self, archive: &std::path::Path) -> Result<Image, RuntimeError> {
        Ok(Image {
            name: archive.display().to_string(),
            manifest_digest: "sha256:fake".into(),
            chain_id: "sha256:fake".into(),
            config: ImageConfig::default(),
        })
    }

    async fn create(&self, c: &ContainerConfig) -> Result<(), RuntimeError> {
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(Self::failure("create the container"));
        }
        let mut m = self.lock();
        if m.contains_key(&c.id) {
            return Err(RuntimeError::AlreadyExists { what: format!("container {}", c.id) });
        }
        m.insert(c.id.clone(), TaskState::NoTask);
        let mut labels = Map::new();
        if let Some(bot) = c.labels.get(super::LABEL_BOT) {
            labels.insert(super::LABEL_BOT.to_string(), bot.clone());
        }
        labels.insert(super::LABEL_KIND.to_string(), super::KIND_ACTIVE.to_string());
        let key = match &c.snapshot {
            Some(k) => k.clone(),
            None => {
                self.add_snapshot(&c.id, &c.image.chain_id, false, labels);
                c.id.clone()
            }
        };
        self.roots().insert(c.id.clone(), key);
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<super::Started, RuntimeError> {
        if self.fail_start.load(Ordering::SeqCst) {
            return Err(Self::failure("start the task"));
        }
        let pid = 1000 + self.next_pid.fetch_add(1, Ordering::SeqCst);
        match self.lock().get_mut(id) {
            Some(TaskState::Running { pid }) => return Ok(super::Started { pid: *pid, created: false }),
            Some(s) => *s = TaskState::Running { pid },
            None => return Err(RuntimeError::NotFound { what: format!("container {id}") }),
        }
        Ok(super::Started { pid, created: true })
    }

    async fn disk_usage(&self, _id: &str) -> Result<super::DiskUsage, RuntimeError> {
        Ok(super::DiskUsage::default())
    }

    fn user_cgroup_procs(&self, _id: &str) -> Result<Vec<std::os::fd::OwnedFd>, RuntimeError> {
        Ok(Vec::new())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<Option<u32>, RuntimeError> {
        match self.lock().get_mut(id) {
            Some(s) => {
                let was_running = matches!(s, TaskState::Running { .. });
                *s = TaskState::NoTask;
                Ok(was_running.then_some(0))
            }
            None => Err(RuntimeError::NotFound { what: format!("container {id}") }),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        self.lock().remove(id);
        if let Some(key) = self.roots().remove(id) {
            self.snaps().remove(&key);
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn state(&self, id: &str) -> Result<TaskState, RuntimeError> {
        self.lock().get(id).copied().ok_or_else(|| RuntimeError::NotFound { what: format!("container {id}") })
    }

    async fn container_snapshot(&self, id: &str) -> Result<String, RuntimeError> {
        self.roots().get(id).cloned().ok_or_else(|| RuntimeError::NotFound { what: format!("container {id}") })
    }

    async fn set_container_snapshot(&self, id: &str, key: &str) -> Result<(), RuntimeError> {
        match self.roots().get_mut(id) {
            Some(k) => *k = key.to_string(),
            None => return Err(RuntimeError::NotFound { what: format!("container {id}") }),
        }
        Ok(())
    }

    async fn snapshots(&self, key: &str, value: &str) -> Result<Vec<SnapshotInfo>, RuntimeError> {
        Ok(self.snaps().values().filter(|s| s.labels.get(key).map(String::as_str) == Some(value)).cloned().collect())
    }

    async fn snapshot(&self, key: &str) -> Result<SnapshotInfo, RuntimeError> {
        self.snaps().get(key).cloned().ok_or_else(|| RuntimeError::NotFound { what: format!("snapshot {key}") })
    }

    async fn snapshot_usage(&self, key: &str) -> Result<u64, RuntimeError> {
        self.snapshot(key).await.map(|_| 0)
    }

    async fn prepare_snapshot(&self, key: &str, parent: &str, labels: Map<String, String>) -> Result<(), RuntimeError> {
        if self.snaps().contains_key(key) {
            return Err(RuntimeError::AlreadyExists { what: format!("snapshot {key}") });
        }
        self.add_snapshot(key, parent, false, labels);
        Ok(())
    }

    async fn capture_snapshot(
        &self,
        active: &str,
        _freeze: Option<&str>,
        key: &str,
        labels: Map<String, String>,
    ) -> Result<SnapshotInfo, RuntimeError> {
        let parent = self.snapshot(active).await?.parent;
        Ok(self.add_snapshot(key, &parent, true, labels))
    }

    async fn flatten_snapshot(
        &self,
        key: &str,
        base: &str,
        new_key: &str,
        labels: Map<String, String>,
    ) -> Result<SnapshotInfo, RuntimeError> {
        self.snapshot(key).await?;
        Ok(self.add_snapshot(new_key, base, true, labels))
    }

    async fn remove_snapshot(&self, key: &str) -> Result<(), RuntimeError> {
        let mut snaps = self.snaps();
        if snaps.values().any(|s| s.parent == key) {
            return Err(RuntimeError::Conflict {
                op: format!("remove snapshot {key}"),
                reason: "it has children".into(),
            });
        }
        snaps.remove(key);
        Ok(())
    }

    async fn label_snapshot(&self, key: &str, labels: Map<String, String>) -> Result<(), RuntimeError> {
        let mut snaps = self.snaps();
        let s = snaps.get_mut(key).ok_or_else(|| RuntimeError::NotFound { what: format!("snapshot {key}") })?;
        for (k, v) in labels {
            if v.is_empty() {
                s.labels.remove(&k);
            } else {
                s.labels.insert(k, v);
            }
        }
        Ok(())
    }

    async fn mount_snapshot(
        &self,
        _key: &str,
        _target: &std::path::Path,
        _readonly: bool,
    ) -> Result<Mounted, RuntimeError> {
        Err(Self::failure("mount a snapshot (the fake runtime has no files)"))
    }

    async fn thaw(&self, _id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn oom_kills(&self, _id: &str) -> Option<u64> {
        None
    }

    fn task_log_len(&self, _id: &str) -> u64 {
        0
    }

    fn task_log_tail(&self, _id: &str, _from: u64, _max_bytes: u64) -> Option<String> {
        None
    }

    fn trim_task_logs(&self, _max_bytes: u64) -> Result<Vec<(String, u64)>, RuntimeError> {
        Ok(Vec::new())
    }
}
