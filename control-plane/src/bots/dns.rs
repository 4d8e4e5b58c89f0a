//! The resolver every bot gets: an `/etc/resolv.conf` berthd writes (`<run_dir>/resolv-<hash>.conf`) and
//! bind-mounts read-only into each bot, so a bot's first `pip install` resolves names whatever its image
//! holds (the `full` image ships none; Docker does the same). The servers are `dns_servers` when
//! configured, else the host's own, minus loopback addresses (a bot has its own loopback:
//! systemd-resolved's 127.0.0.53 means nothing there), in which case systemd-resolved's upstream list
//! is used. With none left, bots get no server and berthd says so at every create.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use sha2::Digest;

/// The host's resolver configuration, and where systemd-resolved keeps the servers it forwards to.
const HOST: &str = "/etc/resolv.conf";
const RESOLVED_UPSTREAM: &str = "/run/systemd/resolve/resolv.conf";
/// Where in a bot the file is mounted.
pub const IN_BOT: &str = "/etc/resolv.conf";

/// What goes into a bot's resolv.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    pub servers: Vec<IpAddr>,
    /// The host's `search` domains (kept only when the servers are the host's).
    pub search: Vec<String>,
}

impl Resolver {
    /// From `configured` servers, else the host's (`host` and systemd-resolved's `upstream` files' text).
    pub fn choose(configured: &[IpAddr], host: &str, upstream: Option<&str>) -> Resolver {
        if !configured.is_empty() {
            return Resolver { servers: configured.to_vec(), search: Vec::new() };
        }
        let (servers, search) = parse(host);
        let mut reachable: Vec<IpAddr> = servers.iter().copied().filter(|s| !s.is_loopback()).collect();
        if reachable.is_empty()
            && let Some(up) = upstream
        {
            reachable = parse(up).0.into_iter().filter(|s| !s.is_loopback()).collect();
        }
        Resolver { servers: reachable, search }
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::from("# Written by berthd (bots::dns); read-only in the bot.\n");
        for s in &self.servers {
            out.push_str(&format!("nameserver {s}\n"));
        }
        if !self.search.is_empty() {
            out.push_str(&format!("search {}\n", self.search.join(" ")));
        }
        // A server that does not answer costs seconds, not half a minute.
        out.push_str("options timeout:2 attempts:2\n");
        out
    }
}

/// Name servers and search domains in resolv.conf text.
fn parse(text: &str) -> (Vec<IpAddr>, Vec<String>) {
    let (mut servers, mut search) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // A scoped IPv6 address (fe80::1%eth0) names a host interface; it cannot serve a bot.
                if let Some(ip) = words.next().and_then(|w| w.parse().ok()) {
                    servers.push(ip);
                }
            }
            Some("search") | Some("domain") => search = words.map(String::from).collect(),
            _ => {}
        }
    }
    (servers, search)
}

/// Writes the bots' resolv.conf into `run_dir` (atomically: a new file renamed into place, so a bot
/// starting never reads half of it) and returns its path and what it holds.
pub fn write(run_dir: &Path, configured: &[IpAddr]) -> std::io::Result<(PathBuf, Resolver)> {
    let host = std::fs::read_to_string(HOST).unwrap_or_default();
    let upstream = std::fs::read_to_string(RESOLVED_UPSTREAM).ok();
    let resolver = Resolver::choose(configured, &host, upstream.as_deref());
    // Named by its content and never replaced once written: runc refuses a bind-mount source that was
    // renamed over while it mounted it ("possibly malicious path detected"), which a rewrite of one shared
    // file by a concurrent create did (the soak test's rare "container runtime failure").
    let text = resolver.render();
    let digest = sha2::Sha256::digest(text.as_bytes());
    let path = run_dir.join(format!("resolv-{}.conf", hex::encode(&digest[..8])));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        let tmp = run_dir.join(format!(".resolv.conf.{}.tmp", uuid::Uuid::new_v4().simple()));
        std::fs::write(&tmp, &text)?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok((path, resolver))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn the_hosts_reachable_servers_else_systemd_resolveds_upstream_else_what_is_configured() {
        let host = "# generated\nnameserver 10.0.0.2\nnameserver 127.0.0.53\nsearch corp.example\noptions edns0\n";
        let r = Resolver::choose(&[], host, None);
        assert_eq!(r.servers, ips(&["10.0.0.2"]), "loopback servers are dropped");
        assert_eq!(r.search, vec!["corp.example"]);
        let stub = "nameserver 127.0.0.53\n";
        let r = Resolver::choose(&[], stub, Some("nameserver 192.0.2.1\nnameserver ::1\n"));
        assert_eq!(r.servers, ips(&["192.0.2.1"]));
        assert!(Resolver::choose(&[], stub, None).servers.is_empty());
        let r = Resolver::choose(&ips(&["9.9.9.9"]), host, None);
        assert_eq!((r.servers, r.search.len()), (ips(&["9.9.9.9"]), 0));
        let text = Resolver::choose(&[], host, None).render();
        assert!(text.contains("nameserver 10.0.0.2\nsearch corp.example\noptions timeout:2"), "{text}");
    }
}
