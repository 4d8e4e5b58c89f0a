//! Host firewall rules Berth owns, kept converged: [`ensure`] checks each rule and (re)adds what is
//! missing or removes what should not be there, and says what it changed. It runs at start and on every
//! reconcile pass, so a rule deleted by hand, by a firewall reload or by another tool comes back within
//! one interval. Every rule carries the comment `berth:<bridge>` so an operator can see whose it is.
//!
//! - NAT: MASQUERADE of the bots' subnet (one rule per network rather than one per bot as CNI's `ipMasq`
//!   would install, so there is one thing to check and repair).
//! - Isolation ([`ensure_chains`]): two chains of our own per bridge, rewritten atomically with
//!   `iptables-restore --noflush` on every pass and reported when what the kernel held differed.
//!   `BERTH-IN-<bridge>` (from INPUT, for packets from the bots): only replies to connections the host
//!   opened (and pings) get through; anything a bot opens to the host (berthd's ports, the database, any service on
//!   any host address) is rejected. `BERTH-FWD-<bridge>` (from FORWARD): bot to bot through the gateway is
//!   rejected (bot to bot on the bridge itself is stopped by isolated bridge ports, see `mod.rs`), so are
//!   the denied destinations (link-local, where cloud metadata services live, by default); the rest is
//!   accepted, with replies, even where the host's FORWARD policy drops.

use std::process::Command;

use super::{BotEgress, Egress, NetworkError};

/// How long iptables may wait for the xtables lock, in seconds.
const LOCK_WAIT_S: &str = "5";

/// One rule: its table, chain and match/target arguments; `first` rules are inserted at the top of
/// their chain (jumps to our chains must come before the host's own rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub chain: &'static str,
    pub spec: Vec<String>,
    pub first: bool,
}

impl Rule {
    fn describe(&self) -> String {
        format!("-t {} {} {}", self.table, self.chain, self.spec.join(" "))
    }
}

/// The chain (from INPUT) for packets bots send to the host.
pub fn input_chain(bridge: &str) -> String {
    format!("BERTH-IN-{bridge}")
}

/// The chain (from FORWARD) for packets bots send through the host.
pub fn forward_chain(bridge: &str) -> String {
    format!("BERTH-FWD-{bridge}")
}

fn spec(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// The single rules for a bridge network, each with whether it should be present: NAT, and the jumps
/// into the isolation chains.
pub fn rules(bridge: &str, subnet: &str, masquerade: bool) -> Vec<(Rule, bool)> {
    let comment = format!("berth:{bridge}");
    let nat = Rule {
        table: "nat",
        chain: "POSTROUTING",
        spec: spec(&["-s", subnet, "!", "-d", subnet, "-m", "comment", "--comment", &comment, "-j", "MASQUERADE"]),
        first: false,
    };
    let (input, forward) = (input_chain(bridge), forward_chain(bridge));
    let to_input = Rule {
        table: "filter",
        chain: "INPUT",
        spec: spec(&["-i", bridge, "-m", "comment", "--comment", &comment, "-j", &input]),
        first: true,
    };
    let to_forward = Rule {
        table: "filter",
        chain: "FORWARD",
        spec: spec(&["-i", bridge, "-m", "comment", "--comment", &comment, "-j", &forward]),
        first: true,
    };
    let replies = Rule {
        table: "filter",
        chain: "FORWARD",
        spec: spec(&[
            "-o",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "ACCEPT",
        ]),
        first: true,
    };
    vec![(nat, masquerade), (to_input, true), (to_forward, true), (replies, true)]
}

/// The contents of the isolation chains, as `iptables-restore` input for the filter table.
pub fn chains(bridge: &str, denied: &[String], bots: &[BotEgress]) -> String {
    let (input, forward) = (input_chain(bridge), forward_chain(bridge));
    let mut t = format!("*filter\n:{input} - [0:0]\n:{forward} - [0:0]\n");
    t.push_str(&format!("-A {input} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n"));
    // Pinging the gateway is how people check a bot's network; it reaches nothing else.
    t.push_str(&format!("-A {input} -p icmp --icmp-type echo-request -j RETURN\n"));
    t.push_str(&format!("-A {input} -p tcp -j REJECT --reject-with tcp-reset\n"));
    t.push_str(&format!("-A {input} -j REJECT --reject-with icmp-port-unreachable\n"));
    t.push_str(&format!("-A {forward} -o {bridge} -j REJECT --reject-with icmp-port-unreachable\n"));
    for cidr in denied {
        t.push_str(&format!("-A {forward} -d {cidr} -p tcp -j REJECT --reject-with tcp-reset\n"));
        t.push_str(&format!("-A {forward} -d {cidr} -j REJECT --reject-with icmp-net-prohibited\n"));
    }
    // Each bot's own policy, after the denials that apply to all.
    for b in bots.iter().filter(|b| !b.ip.is_empty()) {
        let ip = &b.ip;
        match &b.egress {
            Egress::AllowAll => {}
            Egress::DenyAll => {
                t.push_str(&format!("-A {forward} -s {ip}/32 -j REJECT --reject-with icmp-net-prohibited\n"))
            }
            Egress::AllowList(cidrs) => {
                for c in cidrs {
                    t.push_str(&format!("-A {forward} -s {ip}/32 -d {c} -j ACCEPT\n"));
                }
                t.push_str(&format!("-A {forward} -s {ip}/32 -p tcp -j REJECT --reject-with tcp-reset\n"));
                t.push_str(&format!("-A {forward} -s {ip}/32 -j REJECT --reject-with icmp-net-prohibited\n"));
            }
        }
    }
    t.push_str(&format!("-A {forward} -j ACCEPT\nCOMMIT\n"));
    t
}

/// Writes the isolation chains (creating them if needed) and reports whether they had to change.
pub fn ensure_chains(bridge: &str, denied: &[String], bots: &[BotEgress]) -> Result<Vec<String>, NetworkError> {
    let (input, forward) = (input_chain(bridge), forward_chain(bridge));
    let before = (list(&input), list(&forward));
    let mut child = Command::new("iptables-restore")
        .args(["-w", LOCK_WAIT_S, "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| NetworkError::Io { op: "run iptables-restore (is iptables installed?)".into(), source })?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(chains(bridge, denied, bots).as_bytes())
            .map_err(|source| NetworkError::Io { op: "write to iptables-restore".into(), source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| NetworkError::Io { op: "wait for iptables-restore".into(), source })?;
    if !out.status.success() {
        return Err(NetworkError::Io {
            op: format!("write the isolation chains {input} and {forward}"),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    let after = (list(&input), list(&forward));
    Ok(if before == after { Vec::new() } else { vec![format!("rewrote firewall chains {input} and {forward}")] })
}

/// `iptables -S CHAIN` (empty when the chain does not exist).
fn list(chain: &str) -> String {
    Command::new("iptables")
        .args(["-w", LOCK_WAIT_S, "-S", chain])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Brings the host's rules to `want`; returns what was changed ("added …", "removed …").
pub fn ensure(want: &[(Rule, bool)]) -> Result<Vec<String>, NetworkError> {
    let mut changed = Vec::new();
    for (rule, present) in want {
        let exists = iptables(rule.table, "-C", rule)?;
        match (exists, present) {
            (false, true) => {
                if rule.first {
                    run_at_top(rule)?;
                } else {
                    run(rule.table, "-A", rule)?;
                }
                changed.push(format!("added firewall rule {}", rule.describe()));
            }
            (true, false) => {
                // Deleted until none is left (a duplicate added by hand goes too).
                while iptables(rule.table, "-C", rule)? {
                    run(rule.table, "-D", rule)?;
                }
                changed.push(format!("removed firewall rule {}", rule.describe()));
            }
            _ => {}
        }
    }
    Ok(changed)
}

/// Runs a check; `Ok(true)` if the rule exists, `Ok(false)` if it does not.
fn iptables(table: &str, op: &str, rule: &Rule) -> Result<bool, NetworkError> {
    let out = match command(table, op, rule).output() {
        Ok(out) => out,
        // No iptables, no rules: fine when none should exist; adding one then fails, saying why.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(NetworkError::Io { op: "run iptables".into(), source }),
    };
    match out.status.code() {
        Some(0) => Ok(true),
        // 1: the rule does not exist (a missing chain or table is reported the same way).
        Some(1) => Ok(false),
        _ => Err(failed(op, rule, &out.stderr)),
    }
}

fn run(table: &str, op: &str, rule: &Rule) -> Result<(), NetworkError> {
    let out = command(table, op, rule)
        .output()
        .map_err(|source| NetworkError::Io { op: "run iptables (is it installed?)".into(), source })?;
    if out.status.success() { Ok(()) } else { Err(failed(op, rule, &out.stderr)) }
}

fn run_at_top(rule: &Rule) -> Result<(), NetworkError> {
    let out = Command::new("iptables")
        .args(["-w", LOCK_WAIT_S, "-t", rule.table, "-I", rule.chain, "1"])
        .args(&rule.spec)
        .output()
        .map_err(|source| NetworkError::Io { op: "run iptables (is it installed?)".into(), source })?;
    if out.status.success() { Ok(()) } else { Err(failed("-I", rule, &out.stderr)) }
}

fn command(table: &str, op: &str, rule: &Rule) -> Command {
    let mut c = Command::new("iptables");
    c.args(["-w", LOCK_WAIT_S, "-t", table, op, rule.chain]).args(&rule.spec);
    c
}

fn failed(op: &str, rule: &Rule, stderr: &[u8]) -> NetworkError {
    NetworkError::Io {
        op: format!("iptables {op} {}", rule.describe()),
        source: std::io::Error::other(String::from_utf8_lossy(stderr).trim().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_is_one_commented_rule_for_the_subnet() {
        let r = rules("berth0", "10.1.0.0/24", true);
        assert_eq!(r.len(), 4);
        let (rule, present) = &r[0];
        assert!(*present);
        assert_eq!((rule.table, rule.chain), ("nat", "POSTROUTING"));
        assert_eq!(
            rule.spec.join(" "),
            "-s 10.1.0.0/24 ! -d 10.1.0.0/24 -m comment --comment berth:berth0 -j MASQUERADE"
        );
        assert!(!rules("berth0", "10.1.0.0/24", false)[0].1);
        // The jumps into our chains are always wanted, at the top of INPUT and FORWARD.
        assert!(r[1..].iter().all(|(rule, present)| *present && rule.first && rule.table == "filter"));
    }

    #[test]
    fn isolation_chains_reject_host_and_bot_to_bot_and_denied_destinations() {
        let bots = [
            BotEgress { ip: "10.1.0.2".into(), egress: Egress::AllowAll },
            BotEgress { ip: "10.1.0.3".into(), egress: Egress::DenyAll },
            BotEgress { ip: "10.1.0.4".into(), egress: Egress::AllowList(vec!["192.0.2.0/24".into()]) },
        ];
        let t = chains("berth0", &["169.254.0.0/16".into()], &bots);
        assert!(!t.contains("10.1.0.2"), "{t}");
        assert!(t.contains("-A BERTH-FWD-berth0 -s 10.1.0.3/32 -j REJECT"), "{t}");
        let allow = t.find("-s 10.1.0.4/32 -d 192.0.2.0/24 -j ACCEPT").unwrap();
        let deny = t.find("-s 10.1.0.4/32 -p tcp -j REJECT").unwrap();
        let metadata = t.find("-d 169.254.0.0/16").unwrap();
        assert!(metadata < allow && allow < deny, "{t}");
        assert!(t.starts_with("*filter\n:BERTH-IN-berth0 - [0:0]\n:BERTH-FWD-berth0 - [0:0]\n"), "{t}");
        assert!(t.contains("-A BERTH-IN-berth0 -j REJECT"), "{t}");
        assert!(t.contains("-A BERTH-FWD-berth0 -o berth0 -j REJECT"), "{t}");
        assert!(t.contains("-A BERTH-FWD-berth0 -d 169.254.0.0/16 -j REJECT"), "{t}");
        assert!(t.ends_with("-A BERTH-FWD-berth0 -j ACCEPT\nCOMMIT\n"), "{t}");
    }
}
