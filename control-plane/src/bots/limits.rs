//! A bot's resource limits as asked for at create, resolved against berthd's defaults and checked against
//! what the kernel accepts and the host has. No bot is unlimited unless someone chose it: a field left
//! unset takes the configured default, and "unlimited" is its own explicit request.

use crate::error::{Error, Result};
use crate::runtime::Limits;

/// One limit as asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Ask {
    /// berthd's configured default.
    #[default]
    Default,
    /// No limit (an explicit choice).
    Unlimited,
    /// This value.
    Set(u64),
}

/// The limits a create asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitsRequest {
    pub memory_bytes: Ask,
    pub cpu_millis: Ask,
    pub pids: Ask,
    pub disk_bytes: Ask,
}

impl LimitsRequest {
    /// Exactly these limits (`None` = unlimited).
    pub fn exactly(l: Limits) -> LimitsRequest {
        let ask = |v: Option<u64>| v.map_or(Ask::Unlimited, Ask::Set);
        LimitsRequest {
            memory_bytes: ask(l.memory_bytes),
            cpu_millis: ask(l.cpu_millis),
            pids: ask(l.pids),
            disk_bytes: ask(l.disk_bytes),
        }
    }
}

/// Smallest memory limit: the agent keeps at least 8 MiB for itself and the bot's work needs some too.
pub const MIN_MEMORY_BYTES: u64 = 32 << 20;
/// Smallest CPU limit: the kernel's CFS quota is at least 1 ms per 100 ms period.
pub const MIN_CPU_MILLIS: u64 = 10;
/// Smallest pids limit: the agent keeps at least 8 for itself; below this a shell pipeline fails.
pub const MIN_PIDS: u64 = 32;
/// Smallest disk limit: room for a shell's temporary files and a small `/data`.
pub const MIN_DISK_BYTES: u64 = 16 << 20;
/// Largest pids limit (the kernel's own `pid_max` ceiling).
pub const MAX_PIDS: u64 = 4 << 20;

/// What the host has, bounding every limit from above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub memory_bytes: u64,
    pub cpu_millis: u64,
}

impl Host {
    /// This machine: `MemTotal` and the CPUs this process may run on.
    pub fn probe() -> Host {
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map_or(u64::MAX, |kib| kib * 1024);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        Host { memory_bytes, cpu_millis: cpus * 1000 }
    }
}

/// Resolves `ask` against `defaults` (`None` there = unlimited by configuration; a default above what the
/// host has is cut to it) and checks each value.
pub fn resolve(ask: LimitsRequest, defaults: Limits, host: Host) -> Result<Limits> {
    // A default larger than this host (2 cores' worth on a 1-core machine) is the whole host.
    let pick = |a: Ask, d: Option<u64>, host_max: u64| match a {
        Ask::Default => d.map(|d| d.min(host_max)),
        Ask::Unlimited => None,
        Ask::Set(v) => Some(v),
    };
    let l = Limits {
        memory_bytes: pick(ask.memory_bytes, defaults.memory_bytes, host.memory_bytes),
        cpu_millis: pick(ask.cpu_millis, defaults.cpu_millis, host.cpu_millis),
        pids: pick(ask.pids, defaults.pids, MAX_PIDS),
        disk_bytes: pick(ask.disk_bytes, defaults.disk_bytes, u64::MAX),
    };
    check("memory_bytes", l.memory_bytes, MIN_MEMORY_BYTES, host.memory_bytes, "bytes (the host's memory)")?;
    check("cpu_millis", l.cpu_millis, MIN_CPU_MILLIS, host.cpu_millis, "thousandths of a core (the host's CPUs)")?;
    check("pids", l.pids, MIN_PIDS, MAX_PIDS, "processes")?;
    check("disk_bytes", l.disk_bytes, MIN_DISK_BYTES, i64::MAX as u64, "bytes")?;
    Ok(l)
}

fn check(name: &str, v: Option<u64>, min: u64, max: u64, unit: &str) -> Result<()> {
    match v {
        Some(v) if v < min || v > max => Err(Error::InvalidArgument(format!(
            "{name} = {v} is out of range: it must be between {min} and {max} {unit}, or unlimited"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HOST: Host = Host { memory_bytes: 8 << 30, cpu_millis: 4000 };
    const DEFAULTS: Limits =
        Limits { memory_bytes: Some(2 << 30), cpu_millis: Some(2000), pids: Some(1024), disk_bytes: Some(10 << 30) };

    #[test]
    fn nothing_asked_means_the_defaults_and_unlimited_must_be_asked_for() {
        assert_eq!(resolve(LimitsRequest::default(), DEFAULTS, HOST).unwrap(), DEFAULTS);
        let small = Host { memory_bytes: 1 << 30, cpu_millis: 1000 };
        let cut = resolve(LimitsRequest::default(), DEFAULTS, small).unwrap();
        assert_eq!((cut.memory_bytes, cut.cpu_millis), (Some(1 << 30), Some(1000)));
        let all = LimitsRequest {
            memory_bytes: Ask::Unlimited,
            cpu_millis: Ask::Unlimited,
            pids: Ask::Unlimited,
            disk_bytes: Ask::Unlimited,
        };
        assert_eq!(resolve(all, DEFAULTS, HOST).unwrap(), Limits::default());
        let one = LimitsRequest { pids: Ask::Set(64), ..Default::default() };
        assert_eq!(resolve(one, DEFAULTS, HOST).unwrap().pids, Some(64));
    }

    #[test]
    fn values_out_of_range_name_the_field_and_the_bounds() {
        for (ask, field) in [
            (LimitsRequest { memory_bytes: Ask::Set(1), ..Default::default() }, "memory_bytes = 1"),
            (LimitsRequest { memory_bytes: Ask::Set(9 << 30), ..Default::default() }, "memory_bytes"),
            (LimitsRequest { cpu_millis: Ask::Set(1), ..Default::default() }, "cpu_millis = 1"),
            (LimitsRequest { cpu_millis: Ask::Set(4001), ..Default::default() }, "cpu_millis"),
            (LimitsRequest { pids: Ask::Set(1), ..Default::default() }, "pids = 1"),
            (LimitsRequest { disk_bytes: Ask::Set(1 << 20), ..Default::default() }, "disk_bytes = 1048576"),
        ] {
            let e = resolve(ask, DEFAULTS, HOST).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("between"), "{e}");
        }
        // A default out of range is caught too (the configuration is checked at start the same way).
        let bad = Limits { pids: Some(2), ..DEFAULTS };
        assert!(resolve(LimitsRequest::default(), bad, HOST).is_err());
    }
}
