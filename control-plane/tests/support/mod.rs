//! Test support for the control plane: private containerd, PostgreSQL and berthd.

pub mod berthd;
pub mod cluster;
pub mod containerd;
pub mod postgres;
pub mod registry;

/// Sends `signal` to a child, waits up to 10 s for it to exit, then kills it.
pub fn stop_child(child: &mut std::process::Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Removes the firewall rules and chains a berthd installed for `bridge` (they outlive berthd on purpose).
pub fn remove_firewall(bridge: &str) {
    use std::process::{Command, Stdio};
    let tag = format!("berth:{bridge}");
    for table in ["nat", "filter"] {
        let Ok(o) = Command::new("iptables").args(["-w", "5", "-t", table, "-S"]).output() else { continue };
        for rule in String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains(&tag)) {
            let args: Vec<String> =
                rule.replacen("-A", "-D", 1).replace('"', "").split(' ').map(String::from).collect();
            let _ = Command::new("iptables").args(["-w", "5", "-t", table]).args(&args).status();
        }
    }
    for chain in [format!("BERTH-IN-{bridge}"), format!("BERTH-FWD-{bridge}")] {
        let _ = Command::new("iptables").args(["-w", "5", "-F", &chain]).stderr(Stdio::null()).status();
        let _ = Command::new("iptables").args(["-w", "5", "-X", &chain]).stderr(Stdio::null()).status();
    }
}

/// Lazily unmounts everything mounted below `root` (deepest first): what a failed test left would make
/// its temporary directory impossible to remove.
pub fn unmount_under(root: &std::path::Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return };
    let root = root.display().to_string();
    let mut targets: Vec<&str> =
        mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|t| t.starts_with(&root)).collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = std::process::Command::new("umount").args(["-l", t]).status();
    }
}
