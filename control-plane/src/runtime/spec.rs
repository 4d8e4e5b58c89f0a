//! The OCI runtime spec of a bot's container, built as JSON (containerd passes it to runc as is). The
//! defaults follow containerd's own and tighten them: a reduced capability set (no raw sockets), a seccomp
//! filter, masked and read-only `/proc` and `/sys` paths, no new privileges, devices denied except runc's
//! defaults. Resource limits (rlimits) are inherited
//! from containerd rather than set, since a fixed value may exceed what the host allows.

use serde_json::{Value, json};

use super::{BindMount, ContainerConfig};

/// The `type_url` containerd expects for a JSON runtime spec.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Capabilities a bot's processes keep: containerd's default set without CAP_NET_RAW (raw sockets would
/// let a bot forge packets on the bots' network; `ping` works without it, see [`sysctls`]).
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Kernel settings of the bot's own network namespace: ICMP echo sockets for every group, so `ping`
/// works without CAP_NET_RAW; no IPv6 on its link (Berth's firewall is IPv4; loopback keeps `::1`).
/// `on_network`: the bot joins a namespace berthd attached (its link is `eth0`).
fn sysctls(on_network: bool) -> serde_json::Map<String, serde_json::Value> {
    let mut s = serde_json::Map::new();
    s.insert("net.ipv4.ping_group_range".into(), json!("0 2147483647"));
    if on_network && std::path::Path::new("/proc/sys/net/ipv6").exists() {
        s.insert("net.ipv6.conf.eth0.disable_ipv6".into(), json!("1"));
        s.insert("net.ipv6.conf.default.disable_ipv6".into(), json!("1"));
    }
    s
}

const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Syscalls a bot may not make (EPERM): kernel keyrings, BPF, perf, userfaultfd and io_uring (the large
/// attack surfaces Docker also closes), module and kexec loading, file handles (the "shocker" escape),
/// clock, swap, reboot, accounting and raw port I/O. Most also need capabilities bots do not have; the
/// filter makes that two walls instead of one.
const DENIED_SYSCALLS: &[&str] = &[
    "add_key",
    "keyctl",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "reboot",
    "pivot_root",
    "lookup_dcookie",
    "quotactl",
    "uselib",
    "vm86",
    "vm86old",
    "nfsservctl",
    "fanotify_init",
];

/// `CLONE_NEWUSER`: creating a user namespace is refused (it opens kernel code to unprivileged users).
const CLONE_NEWUSER: u64 = 0x1000_0000;

/// The seccomp filter: allow by default, refuse [`DENIED_SYSCALLS`] and new user namespaces (`clone` and
/// `unshare` with CLONE_NEWUSER; `clone3`, whose flags a filter cannot see, answers ENOSYS so libc falls
/// back to `clone`, as Docker's profile does).
fn seccomp() -> Value {
    let newuser = json!([{"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER, "op": "SCMP_CMP_MASKED_EQ"}]);
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM},
            {"names": ["clone", "unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM, "args": newuser},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}
        ]
    })
}

/// CFS period used to express CPU limits.
const CPU_PERIOD_US: u64 = 100_000;

/// Builds the spec for `c` in containerd namespace `namespace`.
pub fn build(c: &ContainerConfig, namespace: &str) -> Value {
    let mut env = c.image.config.env.clone();
    for e in &c.env {
        let key = e.split('=').next().unwrap_or("");
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    let cwd = if c.image.config.working_dir.is_empty() { "/".to_string() } else { c.image.config.working_dir.clone() };
    let caps: Vec<&str> = CAPABILITIES.to_vec();
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro", "nosuid", "noexec", "nodev"]}),
    ];
    mounts.extend(c.mounts.iter().map(bind));
    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
    namespaces.push(match &c.netns {
        Some(path) => json!({"type": "network", "path": path}),
        None => json!({"type": "network"}),
    });
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(m) = c.limits.memory_bytes {
        resources["memory"] = json!({"limit": m, "swap": m});
    }
    if let Some(cpu) = c.limits.cpu_millis {
        resources["cpu"] = json!({"quota": cpu * CPU_PERIOD_US / 1000, "period": CPU_PERIOD_US});
    }
    if let Some(p) = c.limits.pids {
        resources["pids"] = json!({"limit": p});
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": c.args,
            "env": env,
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": c.hostname,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": format!("/{}", super::cgroup::container_path(namespace, &c.id)),
            "resources": resources,
            "sysctl": sysctls(c.netns.is_some()),
            "seccomp": seccomp(),
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS
        }
    })
}

fn bind(m: &BindMount) -> Value {
    let mode = if m.readonly { "ro" } else { "rw" };
    json!({"destination": m.destination, "type": "bind", "source": m.source, "options": ["rbind", mode, "nosuid", "nodev"]})
}
