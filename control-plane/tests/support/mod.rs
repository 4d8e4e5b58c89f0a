//! Test support for the control plane: private containerd, PostgreSQL and berthd.

pub mod berthd;
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
