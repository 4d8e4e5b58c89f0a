//! Bot networking. [`Network`] gives each bot a named network namespace that outlives task restarts and
//! attaches it with CNI (`cni.rs` is the only code that runs CNI plugins): a bridge with an explicit MAC,
//! host-local IPAM, loopback, optional MASQUERADE. Transient plugin failures are retried with backoff; a
//! failure that persists is returned with the plugin's message, after everything half-made was removed.

pub mod cni;
pub mod fake;
pub mod firewall;
pub mod netns;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// What the host side of networking looks like.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Where the CNI plugin binaries are (Debian: /usr/lib/cni).
    pub cni_bin_dir: PathBuf,
    /// Where named network namespaces are mounted.
    pub netns_dir: PathBuf,
    /// host-local IPAM's data directory (its IP leases).
    pub ipam_dir: PathBuf,
    /// The bridge's name (at most 15 bytes).
    pub bridge: String,
    /// The bots' subnet, e.g. 10.213.0.0/16; the bridge takes its first address.
    pub subnet: String,
    /// NAT bots' outbound traffic to the host's addresses.
    pub masquerade: bool,
    /// Destinations (CIDRs) no bot may reach through the host (besides the host itself and other bots,
    /// which are always refused).
    pub egress_denied: Vec<String>,
    /// ADD attempts before giving up.
    pub attempts: u32,
    /// Wait after the first failed attempt; doubled each time.
    pub backoff: Duration,
}

/// Where a bot may open connections beyond the host (which, like other bots, it can never reach).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Egress {
    /// Anywhere but berthd's `egress_deny` destinations.
    #[default]
    AllowAll,
    /// Nowhere.
    DenyAll,
    /// Only these IPv4 CIDRs (and never the `egress_deny` ones).
    AllowList(Vec<String>),
}

impl Egress {
    /// Builds a policy, checking each CIDR; an empty allow-list is refused (say `DenyAll`).
    pub fn allow_list(cidrs: Vec<String>) -> Result<Egress, String> {
        if cidrs.is_empty() {
            return Err("an egress allow-list needs at least one CIDR (or deny all)".into());
        }
        for c in &cidrs {
            check_cidr(c)?;
        }
        Ok(Egress::AllowList(cidrs))
    }

    /// The stored form: `all`, `none` or `cidrs:A,B`.
    pub fn to_db(&self) -> String {
        match self {
            Egress::AllowAll => "all".into(),
            Egress::DenyAll => "none".into(),
            Egress::AllowList(c) => format!("cidrs:{}", c.join(",")),
        }
    }

    pub fn from_db(s: &str) -> Result<Egress, String> {
        match s {
            "all" | "" => Ok(Egress::AllowAll),
            "none" => Ok(Egress::DenyAll),
            s => match s.strip_prefix("cidrs:") {
                Some(list) => Egress::allow_list(list.split(',').map(String::from).collect()),
                None => Err(format!("unknown egress policy {s:?}")),
            },
        }
    }
}

/// Checks an IPv4 CIDR (`A.B.C.D/N`).
pub fn check_cidr(s: &str) -> Result<(), String> {
    let bad = || format!("{s:?} is not an IPv4 CIDR (A.B.C.D/N)");
    let (ip, len) = s.split_once('/').ok_or_else(bad)?;
    ip.parse::<std::net::Ipv4Addr>().map_err(|_| bad())?;
    match len.parse::<u8>() {
        Ok(n) if n <= 32 => Ok(()),
        _ => Err(bad()),
    }
}

/// A bot's address and egress policy, for the firewall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BotEgress {
    pub ip: String,
    pub egress: Egress,
}

/// A bot's attachment, persisted so DEL and CHECK get the ADD result, as CNI requires.
#[derive(Debug, Clone, PartialEq)]
pub struct Attachment {
    pub netns: PathBuf,
    pub ip: String,
    pub result: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("CNI plugin `{plugin}` failed on {command}: {message}")]
    Plugin { plugin: String, command: String, message: String },
    #[error("cannot {op}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network setup for `{bot}` failed after {attempts} attempts")]
    GaveUp {
        bot: String,
        attempts: u32,
        #[source]
        last: Box<NetworkError>,
    },
}

/// What the lifecycle needs from networking.
pub trait Network: Send + Sync + 'static {
    /// Where the bot's named namespace is (or will be once attached).
    fn netns_path(&self, bot: &str) -> PathBuf;
    /// Creates the bot's namespace and attaches it; on failure nothing is left behind.
    fn attach(&self, bot: &str) -> impl Future<Output = Result<Attachment, NetworkError>> + Send;
    /// Detaches (DEL with the ADD result) and removes the namespace; what is gone is skipped.
    fn detach(
        &self,
        bot: &str,
        attachment: Option<&Attachment>,
    ) -> impl Future<Output = Result<(), NetworkError>> + Send;
    /// Checks a running bot's attachment and repairs what it can without changing its address: a named
    /// namespace whose mount was removed (re-mounted from the task `pid`), a deleted bridge (recreated
    /// with its gateway address), a zero bridge MAC, a host veth no longer on the bridge. Returns what
    /// was repaired.
    fn repair(
        &self,
        bot: &str,
        attachment: &Attachment,
        pid: u32,
    ) -> impl Future<Output = Result<Vec<String>, NetworkError>> + Send;
    /// Releases address leases held for bots not in `known` (left by a crash between an ADD and its
    /// record, or by hand). Only leases older than a few minutes are touched, so a create in progress
    /// never loses its address. Returns the released addresses.
    fn release_leaked(&self, known: &[String]) -> impl Future<Output = Result<Vec<String>, NetworkError>> + Send;
    /// Brings the host's firewall rules for the bots' network (NAT, isolation, each bot's egress policy)
    /// to what the configuration and `bots` ask, re-adding any that were deleted. Returns what changed.
    fn ensure_rules(&self, bots: &[BotEgress]) -> impl Future<Output = Result<Vec<String>, NetworkError>> + Send;
}

/// How old a lease must be before [`Network::release_leaked`] may release it.
pub const LEASE_GRACE: Duration = Duration::from_secs(300);

/// CNI networking on the host.
#[derive(Debug, Clone)]
pub struct Cni {
    config: NetworkConfig,
    /// When the bridge itself was last checked by a repair: once per [`BRIDGE_RECHECK`], not once per bot
    /// (its IPv6 switch lives in /proc/sys, where a lookup costs time in proportion to the host's
    /// interfaces, one per bot).
    bridge_checked: Arc<Mutex<Option<std::time::Instant>>>,
}

/// How often a repair checks the bridge (its existence, MAC and IPv6 switch).
const BRIDGE_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl Cni {
    pub fn new(config: NetworkConfig) -> Cni {
        Cni { config, bridge_checked: Arc::default() }
    }

    /// Whether the bridge is due a check (and marks it checked).
    fn bridge_due(&self) -> bool {
        let mut last = crate::sync::lock(&self.bridge_checked);
        let due = last.is_none_or(|t| t.elapsed() >= BRIDGE_RECHECK);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    fn list(&self) -> Value {
        json!({
            "name": "berth",
            "plugins": [{
                "type": "bridge",
                "bridge": self.config.bridge,
                "isGateway": true,
                // NAT is firewall.rs's, one rule per network, kept converged by the reconciler.
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.config.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.config.ipam_dir,
                }
            }]
        })
    }

    fn loopback() -> Value {
        json!({"name": "berth-lo", "plugins": [{"type": "loopback"}]})
    }

    fn add(&self, bot: &str, netns: &Path) -> Result<Value, NetworkError> {
        let inv = cni::Invocation { bin_dir: &self.config.cni_bin_dir, container_id: bot, netns, ifname: "eth0" };
        let lo = cni::Invocation { ifname: "lo", ..inv };
        // The two networks touch different interfaces of the namespace: run their plugins at once (each
        // plugin is a process start, a good part of a create's time).
        let (result, lo_result) = std::thread::scope(|s| {
            let lo_added = s.spawn(|| cni::run_list(&lo, "ADD", &Self::loopback(), None));
            let result = cni::run_list(&inv, "ADD", &self.list(), None);
            let lo_result = lo_added.join().unwrap_or_else(|_| {
                Err(NetworkError::Io {
                    op: format!("bring up the loopback of `{bot}`"),
                    source: std::io::Error::other("the loopback plugin's thread panicked"),
                })
            });
            (result, lo_result)
        });
        let result = result?;
        lo_result?;
        repair_bridge_mac(&self.config.bridge);
        disable_ipv6(&self.config.bridge)?;
        let veth = host_veth(&result, &self.config.bridge).ok_or_else(|| NetworkError::Io {
            op: format!("isolate the bridge port of `{bot}`"),
            source: std::io::Error::other("the CNI result names no host-side veth"),
        })?;
        set_isolated(&veth)?;
        Ok(result)
    }

    fn del(&self, bot: &str, netns: &Path, prev: Option<&Value>) -> Result<(), NetworkError> {
        let inv = cni::Invocation { bin_dir: &self.config.cni_bin_dir, container_id: bot, netns, ifname: "eth0" };
        cni::run_list(&inv, "DEL", &self.list(), prev)?;
        Ok(())
    }
}

impl Network for Cni {
    fn netns_path(&self, bot: &str) -> PathBuf {
        self.config.netns_dir.join(bot)
    }

    async fn attach(&self, bot: &str) -> Result<Attachment, NetworkError> {
        let this = self.clone();
        let bot = bot.to_string();
        blocking(move || this.attach_blocking(&bot)).await
    }

    async fn detach(&self, bot: &str, attachment: Option<&Attachment>) -> Result<(), NetworkError> {
        let this = self.clone();
        let bot = bot.to_string();
        let prev = attachment.map(|a| a.result.clone());
        blocking(move || this.detach_blocking(&bot, prev.as_ref())).await
    }

    async fn release_leaked(&self, known: &[String]) -> Result<Vec<String>, NetworkError> {
        // host-local keeps one file per address, named by it, holding the container id (ours: the bot's name).
        let dir = self.config.ipam_dir.join("berth");
        let known: std::collections::HashSet<String> = known.iter().cloned().collect();
        blocking(move || {
            let mut released = Vec::new();
            let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(released) };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.parse::<std::net::IpAddr>().is_err() {
                    continue;
                }
                let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                if old.is_none_or(|age| age < LEASE_GRACE) {
                    continue;
                }
                let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                let owner = owner.lines().next().unwrap_or("").trim().to_string();
                if !known.contains(&owner) {
                    std::fs::remove_file(e.path())
                        .map_err(|source| NetworkError::Io { op: format!("release lease {name}"), source })?;
                    released.push(format!("{name} (held for `{owner}`)"));
                }
            }
            Ok(released)
        })
        .await
    }

    async fn ensure_rules(&self, bots: &[BotEgress]) -> Result<Vec<String>, NetworkError> {
        let (bridge, denied) = (self.config.bridge.clone(), self.config.egress_denied.clone());
        let want = firewall::rules(&self.config.bridge, &self.config.subnet, self.config.masquerade);
        let bots = bots.to_vec();
        blocking(move || {
            // The chains first: the jumps into them cannot exist before they do.
            let mut changed = firewall::ensure_chains(&bridge, &denied, &bots)?;
            changed.extend(firewall::ensure(&want)?);
            Ok(changed)
        })
        .await
    }

    async fn repair(&self, bot: &str, attachment: &Attachment, pid: u32) -> Result<Vec<String>, NetworkError> {
        let this = self.clone();
        let bot = bot.to_string();
        let a = attachment.clone();
        blocking(move || this.repair_blocking(&bot, &a, pid)).await
    }
}

impl Cni {
    fn attach_blocking(&self, bot: &str) -> Result<Attachment, NetworkError> {
        let netns = netns::create(&self.config.netns_dir, bot)
            .map_err(|source| NetworkError::Io { op: format!("create the network namespace of `{bot}`"), source })?;
        let mut wait = self.config.backoff;
        let mut last = None;
        for attempt in 1..=self.config.attempts.max(1) {
            match self.add(bot, &netns) {
                Ok(result) => {
                    let ip = cni::first_ip(&result).unwrap_or_default();
                    return Ok(Attachment { netns, ip, result });
                }
                Err(e) => {
                    tracing::warn!(bot.name = bot, attempt, error = %crate::error::chain(&e), "network setup failed");
                    // Undo the partial ADD before trying again (DEL is idempotent in CNI).
                    if let Err(d) = self.del(bot, &netns, None) {
                        tracing::warn!(bot.name = bot, error = %crate::error::chain(&d), "cleanup after a failed ADD failed");
                    }
                    last = Some(e);
                    if attempt < self.config.attempts {
                        std::thread::sleep(wait);
                        wait *= 2;
                    }
                }
            }
        }
        if let Err(e) = netns::delete(&netns) {
            tracing::warn!(bot.name = bot, error = %e, "could not remove the network namespace");
        }
        let last =
            last.unwrap_or(NetworkError::Io { op: "attach".into(), source: std::io::Error::other("no attempt") });
        Err(NetworkError::GaveUp { bot: bot.to_string(), attempts: self.config.attempts.max(1), last: Box::new(last) })
    }

    fn detach_blocking(&self, bot: &str, prev: Option<&Value>) -> Result<(), NetworkError> {
        let netns = self.netns_path(bot);
        if netns::is_mounted(&netns) {
            self.del(bot, &netns, prev)?;
        } else if netns.exists() || prev.is_some() {
            // A namespace file never mounted (berthd died half-way through creating it) or already gone:
            // DEL without a namespace still releases the address and the host side, as CNI specifies.
            self.del(bot, Path::new(""), prev)?;
        }
        netns::delete(&netns)
            .map_err(|source| NetworkError::Io { op: format!("remove the network namespace of `{bot}`"), source })
    }
}

impl Cni {
    fn repair_blocking(&self, bot: &str, a: &Attachment, pid: u32) -> Result<Vec<String>, NetworkError> {
        let mut repaired = Vec::new();
        let io = |op: String| move |source| NetworkError::Io { op, source };
        if !netns::is_mounted(&a.netns) {
            netns::bind_from(pid, &a.netns).map_err(io(format!("re-mount the network namespace of `{bot}`")))?;
            repaired.push(format!("re-mounted its network namespace at {} from its task", a.netns.display()));
        }
        let br = &self.config.bridge;
        if !Path::new("/sys/class/net").join(br).exists() {
            self.repair_bridge(a, &mut repaired)?;
        } else if self.bridge_due() {
            if std::fs::read_to_string(format!("/sys/class/net/{br}/address"))
                .is_ok_and(|m| m.trim() == "00:00:00:00:00:00")
            {
                repair_bridge_mac(br);
                repaired.push(format!("gave bridge {br} a MAC (it was zero)"));
            }
            if std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{br}/disable_ipv6"))
                .is_ok_and(|v| v.trim() == "0")
            {
                disable_ipv6(br)?;
                repaired.push(format!("turned IPv6 off on bridge {br} again"));
            }
        }
        if let Some(veth) = host_veth(&a.result, br) {
            let master = std::fs::read_link(format!("/sys/class/net/{veth}/master")).ok();
            let on_bridge = master.as_ref().and_then(|m| m.file_name()).is_some_and(|n| n == br.as_str());
            if Path::new("/sys/class/net").join(&veth).exists() && !on_bridge {
                ip(&["link", "set", &veth, "master", br])?;
                ip(&["link", "set", &veth, "up"])?;
                repaired.push(format!("put its veth {veth} back on bridge {br}"));
            }
            let flag = std::fs::read_to_string(format!("/sys/class/net/{veth}/brport/isolated")).unwrap_or_default();
            if flag.trim() == "0" {
                set_isolated(&veth)?;
                repaired.push(format!("isolated its bridge port {veth} again"));
            }
        }
        Ok(repaired)
    }

    /// Makes the bridge again (gone, e.g. deleted by hand) with the gateway and MAC of `a`'s CNI result,
    /// IPv6 off.
    fn repair_bridge(&self, a: &Attachment, repaired: &mut Vec<String>) -> Result<(), NetworkError> {
        let br = &self.config.bridge;
        let gateway = a.result["ips"]
            .as_array()
            .and_then(|ips| {
                ips.iter().find_map(|ip| {
                    let prefix = ip["address"].as_str()?.split('/').nth(1)?;
                    Some(format!("{}/{prefix}", ip["gateway"].as_str()?))
                })
            })
            .ok_or_else(|| NetworkError::Io {
                op: format!("recreate bridge {br}"),
                source: std::io::Error::other("the bot's CNI result has no gateway"),
            })?;
        ip(&["link", "add", "name", br, "type", "bridge"])?;
        // The MAC it had (in the CNI result), so the bots' ARP entries for their gateway stay right;
        // failing that, a stable one (a bridge with no port has a zero MAC until one is set).
        let old_mac = a.result["interfaces"]
            .as_array()
            .and_then(|ifs| ifs.iter().find(|i| i["name"].as_str() == Some(br.as_str())))
            .and_then(|i| i["mac"].as_str());
        match old_mac {
            Some(mac) => ip(&["link", "set", br, "address", mac])?,
            None => repair_bridge_mac(br),
        }
        match ip(&["addr", "add", &gateway, "dev", br]) {
            Ok(()) => {}
            Err(e) if e.to_string().contains("File exists") => {}
            Err(e) => return Err(e),
        }
        ip(&["link", "set", br, "up"])?;
        disable_ipv6(br)?;
        repaired.push(format!("recreated bridge {br} with gateway {gateway}"));
        Ok(())
    }
}

/// The host side of a bot's veth pair, from its CNI result.
fn host_veth(result: &Value, bridge: &str) -> Option<String> {
    result["interfaces"]
        .as_array()?
        .iter()
        .find(|i| i["sandbox"].as_str().unwrap_or("").is_empty() && i["name"].as_str() != Some(bridge))
        .and_then(|i| i["name"].as_str())
        .map(String::from)
}

/// Makes a bridge port isolated: it exchanges frames with the bridge (the host) only, never with another
/// isolated port, so bots cannot reach each other on the wire (ARP included).
fn set_isolated(veth: &str) -> Result<(), NetworkError> {
    let path = format!("/sys/class/net/{veth}/brport/isolated");
    std::fs::write(&path, "1").map_err(|source| NetworkError::Io { op: format!("isolate bridge port {veth}"), source })
}

/// Turns IPv6 off on a host interface (the bots' bridge): with no address there, the host answers no IPv6
/// from bots (the firewall's rules are IPv4 only). Nothing to do on a kernel without IPv6.
fn disable_ipv6(ifname: &str) -> Result<(), NetworkError> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    if !Path::new(&path).exists() {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|source| NetworkError::Io { op: format!("turn IPv6 off on {ifname}"), source })
}

/// Runs blocking network work (plugins, `ip`, iptables) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NetworkError> + Send + 'static,
) -> Result<T, NetworkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| NetworkError::Io { op: "run a network task".into(), source: std::io::Error::other(e) })?
}

/// Runs `ip ARGS`, naming the command and its error on failure.
fn ip(args: &[&str]) -> Result<(), NetworkError> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetworkError::Io { op: format!("run ip {}", args.join(" ")), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Io {
            op: format!("ip {}", args.join(" ")),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        })
    }
}

/// A bridge whose MAC the kernel zeroed (it had a random one and lost its last port) cannot forward;
/// give it an explicit, stable one. (The CNI bridge plugin sets one itself; this guards the rest.)
pub fn repair_bridge_mac(bridge: &str) {
    let path = format!("/sys/class/net/{bridge}/address");
    let Ok(mac) = std::fs::read_to_string(&path) else { return };
    if mac.trim() != "00:00:00:00:00:00" {
        return;
    }
    // Locally administered, derived from the bridge name so it is stable across repairs.
    let h = bridge.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b))).to_be_bytes();
    let new = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", h[0], h[1], h[2], h[3]);
    let ok =
        std::process::Command::new("ip").args(["link", "set", bridge, "address", &new]).status().map(|s| s.success());
    tracing::warn!(bridge, mac = %new, repaired = ?ok, "bridge had a zero MAC");
}

/// A network failure is an internal one to a caller.
impl From<NetworkError> for crate::error::Error {
    fn from(e: NetworkError) -> crate::error::Error {
        crate::error::Error::internal("bot network failure", e)
    }
}
