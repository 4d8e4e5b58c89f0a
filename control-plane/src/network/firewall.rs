//! Host firewall rules Berth owns, kept converged: [`ensure`] checks each rule and (re)adds what is
//! missing or removes what should not be there, and says what it changed. It runs at start and on every
//! reconcile pass, so a rule deleted by hand, by a firewall reload or by another tool comes back within
//! one interval. Every rule carries the comment `berth:<bridge>` so an operator can see whose it is.
//!
//! Today: MASQUERADE of the bots' subnet (one rule per network rather than one per bot as CNI's `ipMasq`
//! would install, so there is one thing to check and repair).

use std::process::Command;

use super::NetworkError;

/// How long iptables may wait for the xtables lock, in seconds.
const LOCK_WAIT_S: &str = "5";

/// One rule: its table, chain and match/target arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub table: &'static str,
    pub chain: &'static str,
    pub spec: Vec<String>,
}

impl Rule {
    fn describe(&self) -> String {
        format!("-t {} {} {}", self.table, self.chain, self.spec.join(" "))
    }
}

/// The rules for a bridge network, each with whether it should be present.
pub fn rules(bridge: &str, subnet: &str, masquerade: bool) -> Vec<(Rule, bool)> {
    let comment = format!("berth:{bridge}");
    let nat = Rule {
        table: "nat",
        chain: "POSTROUTING",
        spec: ["-s", subnet, "!", "-d", subnet, "-m", "comment", "--comment", &comment, "-j", "MASQUERADE"]
            .map(String::from)
            .to_vec(),
    };
    vec![(nat, masquerade)]
}

/// Brings the host's rules to `want`; returns what was changed ("added …", "removed …").
pub fn ensure(want: &[(Rule, bool)]) -> Result<Vec<String>, NetworkError> {
    let mut changed = Vec::new();
    for (rule, present) in want {
        let exists = iptables(rule.table, "-C", rule)?;
        match (exists, present) {
            (false, true) => {
                run(rule.table, "-A", rule)?;
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
        assert_eq!(r.len(), 1);
        let (rule, present) = &r[0];
        assert!(*present);
        assert_eq!((rule.table, rule.chain), ("nat", "POSTROUTING"));
        assert_eq!(
            rule.spec.join(" "),
            "-s 10.1.0.0/24 ! -d 10.1.0.0/24 -m comment --comment berth:berth0 -j MASQUERADE"
        );
        assert!(!rules("berth0", "10.1.0.0/24", false)[0].1);
    }
}
