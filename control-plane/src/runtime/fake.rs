//! An in-memory [`ContainerRuntime`] for unit tests of lifecycle logic, with switchable failures. It
//! runs nothing: tests of real behaviour use a private containerd.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use super::{ContainerConfig, ContainerRuntime, Image, ImageConfig, RuntimeError, TaskState};

/// The fake runtime.
#[derive(Debug, Default)]
pub struct FakeRuntime {
    containers: Mutex<HashMap<String, TaskState>>,
    next_pid: AtomicU32,
    /// Make the next creates fail.
    pub fail_create: AtomicBool,
    /// Make the next starts fail.
    pub fail_start: AtomicBool,
}

impl FakeRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskState>> {
        self.containers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Ids of the containers that exist.
    pub fn containers(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    fn failure(op: &str) -> RuntimeError {
        RuntimeError::Failed { op: op.into(), source: tonic::Status::internal("injected failure") }
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
        Ok(())
    }

    async fn start(&self, id: &str) -> Result<u32, RuntimeError> {
        if self.fail_start.load(Ordering::SeqCst) {
            return Err(Self::failure("start the task"));
        }
        let pid = 1000 + self.next_pid.fetch_add(1, Ordering::SeqCst);
        match self.lock().get_mut(id) {
            Some(s) => *s = TaskState::Running { pid },
            None => return Err(RuntimeError::NotFound { what: format!("container {id}") }),
        }
        Ok(pid)
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
        Ok(())
    }

    async fn state(&self, id: &str) -> Result<TaskState, RuntimeError> {
        self.lock().get(id).copied().ok_or_else(|| RuntimeError::NotFound { what: format!("container {id}") })
    }
}
