//! A private containerd for tests: its own root, state, socket and config (CRI disabled), started on a
//! temporary directory and stopped, with everything it made cleaned up, when dropped. Fails loudly when
//! containerd is not installed (scripts/install-deps.sh installs it).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private containerd.
pub struct PrivateContainerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// A namespace unique to this test (containerd and runc state are keyed by it).
    pub namespace: String,
    child: Option<Child>,
}

impl PrivateContainerd {
    pub fn start() -> PrivateContainerd {
        Self::start_with_disk(None)
    }

    /// Starts containerd with its root (images and bots' writable layers) on a tmpfs of `mib` MiB, so a
    /// bot can fill its disk without filling the host's.
    pub fn start_with_disk(mib: Option<u64>) -> PrivateContainerd {
        Self::start_on(mib.map(Disk::Tmpfs))
    }

    /// Starts containerd with its root on a loop-mounted btrfs image of `mib` MiB with quotas on (what
    /// `scripts/run.sh` sets up), where berthd enforces per-bot disk limits.
    pub fn start_on_btrfs(mib: u64) -> PrivateContainerd {
        Self::start_on(Some(Disk::Btrfs(mib)))
    }

    fn start_on(disk: Option<Disk>) -> PrivateContainerd {
        let bin = which("containerd").expect("containerd is not installed: run scripts/install-deps.sh");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        if let Some(Disk::Btrfs(mib)) = disk {
            let (image, root) = (d.join("root.img"), d.join("root"));
            std::fs::create_dir_all(&root).expect("containerd root");
            std::fs::File::create(&image).and_then(|f| f.set_len(mib << 20)).expect("btrfs image");
            let run = |cmd: &mut Command| {
                let o = cmd.output().expect("run");
                assert!(o.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&o.stderr));
            };
            run(Command::new("mkfs.btrfs").arg("-q").arg(&image));
            run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&root));
            run(Command::new("btrfs").args(["quota", "enable"]).arg(&root));
        }
        if let Some(Disk::Tmpfs(mib)) = disk {
            std::fs::create_dir_all(d.join("root")).expect("containerd root");
            let st = Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(d.join("root"))
                .status()
                .expect("mount");
            assert!(st.success(), "cannot mount a {mib} MiB tmpfs for containerd's root");
        }
        let socket = d.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            opt = d.join("opt").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("write containerd config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("containerd log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let namespace = format!("berth-test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let ctd = PrivateContainerd { dir, socket, namespace, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&ctd.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not create its socket within 20 s; see {}",
                ctd.log_path().display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ctd
    }

    /// Stops containerd (SIGTERM) and starts it again on the same root, state and socket; shims and the
    /// tasks they run stay up, as on a real host.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::stop_child(&mut c, libc::SIGTERM);
        }
        let _ = std::fs::remove_file(&self.socket);
        let bin = which("containerd").expect("containerd");
        let log = std::fs::OpenOptions::new().append(true).open(self.log_path()).expect("containerd log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("restart containerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "containerd did not come back within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The containerd process's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("containerd is running")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("containerd.log")
    }

    /// Runs `ctr` against this containerd in the test's namespace; returns stdout.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .output()
            .expect("run ctr");
        assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Names in the first column of a `ctr … ls` table.
    pub fn ctr_ls(&self, what: &str) -> Vec<String> {
        self.ctr(&[what, "ls"]).lines().skip(1).filter_map(|l| l.split_whitespace().next().map(String::from)).collect()
    }
}

/// What containerd's root is on, when not the test's temporary directory.
#[derive(Debug, Clone, Copy)]
enum Disk {
    Tmpfs(u64),
    Btrfs(u64),
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        // Bots' processes first (killing a shim leaves its container's processes running, reparented),
        // then the shims of this namespace, which outlive containerd by design.
        kill_bot_processes(&self.namespace);
        let _ = Command::new("pkill").args(["-f", "--", &format!("-namespace {} ", self.namespace)]).status();
        if let Some(mut c) = self.child.take() {
            super::stop_child(&mut c, libc::SIGTERM);
        }
        super::unmount_under(self.dir.path());
        remove_cgroups(&self.namespace);
        // The shims' runc state root is per namespace and shared by every containerd on the host.
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

/// SIGKILLs every process in a cgroup of this namespace's containers (`…/berth/<namespace>/…`).
pub fn kill_bot_processes(namespace: &str) {
    let marker = format!("/berth/{namespace}/");
    let Ok(procs) = std::fs::read_dir("/proc") else { return };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else { continue };
        if std::fs::read_to_string(p.path().join("cgroup")).is_ok_and(|c| c.contains(&marker)) {
            // SAFETY: kill(2) on a process of this test's own containers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes the (empty) cgroup directories a namespace's containers left (a failed test's), deepest first.
pub fn remove_cgroups(namespace: &str) {
    fn remove_tree(dir: &Path) {
        if let Ok(children) = std::fs::read_dir(dir) {
            for child in children.flatten().filter(|e| e.path().is_dir()) {
                remove_tree(&child.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") else { return };
    for c in controllers.flatten() {
        remove_tree(&c.path().join("berth").join(namespace));
    }
    // cgroup v2: the hierarchy is /sys/fs/cgroup itself.
    remove_tree(&Path::new("/sys/fs/cgroup/berth").join(namespace));
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

/// The `full` bot image archive (Node, Python), built by scripts/test.sh (`BERTH_FULL_IMAGE`).
pub fn full_image() -> PathBuf {
    let p = std::env::var_os("BERTH_FULL_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images/berth-full.tar"));
    assert!(p.exists(), "{} is missing: run scripts/build-image.sh full (scripts/test.sh does)", p.display());
    p
}

/// The minimal bot image archive, built by scripts/test.sh (`BERTH_TEST_IMAGE`).
pub fn minimal_image() -> PathBuf {
    let p = std::env::var_os("BERTH_TEST_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images/berth-minimal.tar"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/test.sh (it builds the image with scripts/build-image.sh)",
        p.display()
    );
    p
}
