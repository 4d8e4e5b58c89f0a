//! What this host offers by default: its name, memory and CPUs (each overridable by a setting).

/// The host's name (`/proc/sys/kernel/hostname`), lower-cased; "localhost" if unreadable.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_ascii_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The host's memory (`MemTotal`), in bytes; 0 if unreadable.
pub fn host_memory_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// The CPUs this process may use, in thousandths of a CPU.
pub fn host_cpu_millis() -> u64 {
    std::thread::available_parallelism().map_or(1000, |n| n.get() as u64 * 1000)
}
