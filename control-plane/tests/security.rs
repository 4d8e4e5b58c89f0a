//! The attack suite: run from inside a real bot, each attempt must be refused and change nothing; each
//! writes a row of the security table to `target/tmp/security/` (see docs/SECURITY.md). Every refusal is
//! paired with a control showing the target is really there (a listener the host can reach, an outside
//! address the bot can reach), so "refused" never just means "the network is broken".

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{argv, run};
use support::berthd::TestBerthd;

/// Appends a row to the security table.
fn record(attempt: &str, result: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("security");
    std::fs::create_dir_all(&dir).unwrap();
    let slug: String = attempt.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    std::fs::write(dir.join(format!("{slug}.md")), format!("| {attempt} | {result} |\n")).unwrap();
}

/// Runs a shell script in the bot; returns (exit code, stdout + stderr).
async fn attempt(b: &TestBerthd, bot: &str, script: &str) -> (i32, String) {
    let r = run(&mut b.agent(bot).await, argv(&["sh", "-c", script])).await.unwrap();
    let text = format!("{}{}", r.stdout_str(), String::from_utf8_lossy(&r.stderr));
    match r.code() {
        Some(code) => (code, text),
        None => (-1, format!("{text}[ended without an exit code: {:?}]", r.exited)),
    }
}

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A network namespace on the host standing for "the outside": reachable from the host through a veth,
/// with an HTTP server on port 9000.
struct Outside {
    ns: String,
    veth: String,
    addr: String,
    server: std::process::Child,
}

impl Outside {
    fn start() -> Outside {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..6];
        let (ns, veth, peer) = (format!("out{id}"), format!("vo{id}"), format!("vi{id}"));
        let n = u8::from_str_radix(&id[..2], 16).unwrap();
        let (host, addr) = (format!("198.18.{n}.1"), format!("198.18.{n}.2"));
        sh(&format!(
            "ip netns add {ns} && ip link add {veth} type veth peer name {peer} && ip link set {peer} netns {ns} \
             && ip addr add {host}/30 dev {veth} && ip link set {veth} up \
             && ip netns exec {ns} ip addr add {addr}/30 dev {peer} && ip netns exec {ns} ip link set {peer} up \
             && ip netns exec {ns} ip link set lo up && ip netns exec {ns} ip route add default via {host}"
        ));
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("index.html"), "outside\n").unwrap();
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "busybox", "httpd", "-f", "-p", &format!("{addr}:9000"), "-h"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Built first, so a failure below still removes what was made.
        let outside = Outside { ns, veth, addr, server };
        let t = Instant::now();
        while Command::new("ip")
            .args([
                "netns",
                "exec",
                &outside.ns,
                "busybox",
                "wget",
                "-q",
                "-O",
                "/dev/null",
                &format!("http://{}:9000/", outside.addr),
            ])
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            assert!(t.elapsed() < Duration::from_secs(30), "the outside HTTP server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["link", "del", &self.veth]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A TCP service on every host address (as berthd's TCP port, a database or any daemon would be).
fn host_service() -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(b"host-secret\n");
        }
    });
    (port, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_cannot_reach_each_other_the_host_or_metadata_but_can_reach_the_outside() {
    let b = TestBerthd::start_with(None, &["--masquerade", "--reconcile-interval-ms", "300"]);
    let outside = Outside::start();
    b.cli(&["bot", "create", "attacker"]);
    b.cli(&["bot", "create", "victim"]);
    let bot =
        |name: &str| -> serde_json::Value { serde_json::from_str(&b.cli(&["bot", "get", name, "--json"])).unwrap() };
    let victim_ip = bot("victim")["ip"].as_str().unwrap().to_string();
    let gateway = format!("{}.1", &b.subnet[..b.subnet.rfind('.').unwrap()]);

    // The victim serves on port 8080; the host reaches it (the control).
    let mut serving = b.agent("victim").await;
    let mut listen = argv(&["sh", "-c", "while true; do echo victim-secret | nc -l -p 8080; done"]);
    listen.timeout_ms = 60_000;
    let server = tokio::spawn(async move { run(&mut serving, listen).await });
    let t = Instant::now();
    loop {
        let o = Command::new("busybox").args(["nc", "-w", "2", &victim_ip, "8080"]).output().unwrap();
        if String::from_utf8_lossy(&o.stdout).contains("victim-secret") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the victim's listener is not reachable from the host");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 1. Another bot's service.
    let (rc, out) = attempt(&b, "attacker", &format!("nc -w 3 {victim_ip} 8080")).await;
    assert!(!out.contains("victim-secret"), "a bot reached another bot's port: {out}");
    assert!(rc > 0, "nc did not run to an exit: {out}");
    record(
        "connect to another bot's IP and port (`nc VICTIM_IP 8080`)",
        &format!("refused (exit {rc}); the host reaches the same port"),
    );
    // 2. Another bot's closed port: not even a reset comes back (no frame reaches it: isolated ports).
    let (rc, out) = attempt(&b, "attacker", &format!("nc -w 2 {victim_ip} 1")).await;
    assert!(!out.contains("refused") && rc > 0, "another bot answered: {out}");
    record(
        "reach another bot at all (a closed port, which would answer with a reset)",
        &format!("no answer (exit {rc}): isolated bridge ports, ARP included"),
    );

    // 3. A service on the host, through the gateway and through the host's other addresses.
    let (port, _svc) = host_service();
    let host_ips: Vec<String> = sh("ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1")
        .lines()
        .filter(|a| !a.starts_with("127.") && !a.starts_with("198.18."))
        .map(String::from)
        .collect();
    for ip in &host_ips {
        let (rc, out) = attempt(&b, "attacker", &format!("nc -w 3 {ip} {port}")).await;
        assert!(!out.contains("host-secret"), "a bot reached a host service at {ip}:{port}: {out}");
        assert!(rc > 0 && out.contains("refused"), "{ip}:{port}: {out}");
    }
    let o = Command::new("busybox").args(["nc", "-w", "2", &gateway, &port.to_string()]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("host-secret"), "control: the host service is not up");
    record(
        "connect to a service on the host (bound to 0.0.0.0: berthd's TCP port, a database) via the gateway and every host address",
        "refused at once (TCP reset); the host itself reaches it",
    );
    // 3b. The same host service over IPv6: the bridge's link-local address is on every host with IPv6 on,
    // and iptables (IPv4) would not see that traffic.
    let l6 = std::net::TcpListener::bind("[::]:0").unwrap();
    let port6 = l6.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l6.incoming().flatten() {
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(b"host-secret\n");
        }
    });
    let (_, addrs) = attempt(&b, "attacker", "cat /proc/net/if_inet6; ip -6 addr 2>&1").await;
    assert!(!addrs.contains("fe80"), "a bot has an IPv6 address: {addrs}");
    // Every IPv6 address of the host (/proc/net/if_inet6: 32 hex digits, .., interface name).
    for line in sh("cat /proc/net/if_inet6").lines() {
        let hex = line.split_whitespace().next().unwrap();
        if hex == "00000000000000000000000000000001" {
            continue;
        }
        let groups: Vec<&str> = (0..8).map(|i| &hex[i * 4..i * 4 + 4]).collect();
        let scope = if hex.starts_with("fe80") { "%eth0" } else { "" };
        let (rc, out) = attempt(&b, "attacker", &format!("nc -w 3 {}{scope} {port6}", groups.join(":"))).await;
        assert!(rc > 0 && !out.contains("host-secret"), "a bot reached the host over IPv6 at {hex}: {out}");
    }
    assert!(
        sh(&format!("cat /proc/sys/net/ipv6/conf/{}/disable_ipv6", b.bridge)).trim() == "1",
        "IPv6 is on on the bots' bridge"
    );
    record(
        "connect to a host service over IPv6 (link-local, which IPv4 rules would not see)",
        "impossible: bots have no IPv6 address, and IPv6 is off on their bridge",
    );
    // 4. Cloud metadata.
    // (HTTP by hand with nc: the static busybox's wget needs NSS, which a minimal image lacks.)
    let http = |addr: &str| format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {addr}");
    let (rc, out) = attempt(&b, "attacker", &http("169.254.169.254 80")).await;
    assert!(rc > 0 && out.contains("refused"), "{out}");
    record(
        "fetch cloud metadata (169.254.169.254)",
        &format!("refused (exit {rc}): link-local is in `egress_deny` by default"),
    );
    // 5. The outside is reachable (so the refusals above are policy, not a broken network).
    let (rc, out) = attempt(&b, "attacker", &http(&format!("{} 9000", outside.addr))).await;
    assert!(
        rc == 0 && out.contains("200 OK") && out.trim_end().ends_with("outside"),
        "egress to the outside is broken: {out}\n{}\n{}",
        sh("iptables -w 5 -S"),
        sh("iptables -w 5 -t nat -S")
    );
    // 6. berthd's own socket is not in the bot.
    let (_, out) = attempt(&b, "attacker", "ls -A /run/berth; ls -A /run").await;
    assert!(!out.contains("berthd.sock"), "{out}");
    let (rc, _) = attempt(&b, "attacker", &format!("test -e {}", b.socket.display())).await;
    assert_ne!(rc, 0);
    record("reach berthd's Unix socket", "absent: only the bot's own agent socket and token are mounted");

    // 7. Deleting the rules by hand: the reconciler puts them back.
    sh(&format!("iptables -w 5 -F BERTH-IN-{}", b.bridge));
    let t = Instant::now();
    loop {
        let (_, out) = attempt(&b, "attacker", &format!("nc -w 2 {gateway} {port}")).await;
        if !out.contains("host-secret") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the isolation rules were not restored:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v6 = format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", b.bridge);
    std::fs::write(&v6, "0").unwrap();
    let t = Instant::now();
    while std::fs::read_to_string(&v6).unwrap().trim() != "1" {
        assert!(t.elapsed() < Duration::from_secs(10), "IPv6 stayed on on the bridge:\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    record(
        "the isolation rules flushed by hand, IPv6 turned back on on the bridge",
        "restored by the reconciler within one interval",
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_operations_fail_inside_a_bot() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "probe"]);
    let gateway = format!("{}.1", &b.subnet[..b.subnet.rfind('.').unwrap()]);
    let cases: &[(&str, &str)] = &[
        ("mount a file system (`mount -t tmpfs`)", "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m"),
        ("a raw socket (`arping`, needs CAP_NET_RAW)", &format!("arping -c 1 -w 2 {gateway}")),
        ("a raw ICMP socket (busybox `ping`)", &format!("ping -c 1 -W 2 {gateway}")),
        (
            "read the host's disk through a device node (`mknod` and read it)",
            "mknod /tmp/sda b 8 0 && head -c 1 /tmp/sda",
        ),
        (
            "change the hostname of the host (`hostname x` only changes the bot's UTS namespace; write /proc/sys)",
            "echo evil > /proc/sys/kernel/hostname",
        ),
        ("read the host's kernel log (`dmesg`)", "dmesg"),
        ("create a user namespace (`unshare -U`, the way into most kernel exploits)", "unshare -U true"),
        ("create a user namespace with `unshare -r` (map root)", "unshare -r true"),
        (
            "ptrace the agent (PID 1) or read its memory or environment through /proc (the kernel's ptrace check)",
            "cat /proc/1/environ >/dev/null && readlink /proc/1/exe && ls /proc/1/fd",
        ),
    ];
    for (what, script) in cases {
        let (rc, out) = attempt(&b, "probe", script).await;
        assert!(rc > 0, "{what} succeeded (or crashed): {out}");
        record(what, &format!("refused (exit {rc}): {}", out.lines().last().unwrap_or("").trim()));
    }
    // The bot's own processes stay debuggable (execve makes them dumpable again): the control.
    let (rc, out) = attempt(&b, "probe", "sleep 5 & cat /proc/$!/environ >/dev/null && ls /proc/$!/fd").await;
    assert_eq!(rc, 0, "{out}");
    // No process of the host is visible.
    let (_, out) = attempt(&b, "probe", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '").await;
    assert!(out.contains("berth-agent") && !out.contains("containerd") && !out.contains("berthd"), "{out}");
    record(
        "see or signal a process of the host",
        "impossible: the bot's PID namespace shows only its agent and its own processes",
    );
    // The seccomp filter is on for everything in the bot.
    let (_, out) = attempt(&b, "probe", "grep Seccomp: /proc/self/status").await;
    assert!(out.contains("Seccomp:\t2"), "{out}");
    // The network itself works: the host answers (with a reset: nothing on the host is open to bots).
    let (_, out) = attempt(&b, "probe", &format!("nc -w 2 {gateway} 1")).await;
    assert!(out.contains("refused"), "{out}");
}

#[test]
fn a_token_scoped_to_one_bot_cannot_touch_another() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let (admin, alice) = ("admin-token-0123456789abcdef", "alice-token-0123456789abcdef");
    std::fs::write(&tokens, format!("# operators\n{admin}\n{alice} bots=alice\n")).unwrap();
    let b = TestBerthd::start_with(None, &["--api-token-file", tokens.to_str().unwrap()]);
    let berth = |token: &str, args: &[&str]| -> (i32, String, String) {
        let o = b.berth(args).env("BERTH_TOKEN", token).output().unwrap();
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        (o.status.code().unwrap_or(-1), text(&o.stdout), text(&o.stderr))
    };
    for bot in ["alice", "bob"] {
        assert_eq!(berth(admin, &["bot", "create", bot]).0, 0);
    }
    assert_eq!(berth(admin, &["exec", "bob", "--", "sh", "-c", "echo bob-secret > /data/secret"]).0, 0);
    // Alice's token works on alice.
    let (rc, out, err) = berth(alice, &["exec", "alice", "--", "echo", "mine"]);
    assert_eq!((rc, out.as_str()), (0, "mine\n"), "{err}");
    // Everything that names bob is refused, through every service.
    let copy = dir.path().join("stolen");
    let attempts: Vec<(&str, Vec<&str>)> = vec![
        ("exec in it (agent protocol through berthd)", vec!["exec", "bob", "--", "cat", "/data/secret"]),
        ("read a file (`berth cp`)", vec!["cp", "bob:/data/secret", copy.to_str().unwrap()]),
        ("list its files", vec!["fs", "ls", "bob:/data"]),
        ("read its record", vec!["bot", "get", "bob"]),
        ("stop it", vec!["bot", "stop", "bob"]),
        ("delete it", vec!["bot", "rm", "bob"]),
        ("snapshot it", vec!["snapshot", "create", "bob", "--name", "x"]),
        ("export its data", vec!["data", "export", "bob", "-o", copy.to_str().unwrap()]),
        ("list its operations", vec!["ops", "ls", "bob"]),
        ("pull an image (host-wide)", vec!["image", "pull", "127.0.0.1:1/x:y"]),
    ];
    for (what, args) in &attempts {
        let (rc, out, err) = berth(alice, args);
        assert_ne!(rc, 0, "{what} with alice's token succeeded: {out}");
        assert!(err.contains("may not"), "{what}: {err}");
        assert!(!out.contains("bob-secret") && !copy.exists(), "{what} leaked bob's data");
    }
    // Listing shows alice's bots only; bob is untouched.
    let (_, list, _) = berth(alice, &["bot", "ls"]);
    assert!(list.contains("alice") && !list.contains("bob"), "{list}");
    let (rc, out, _) = berth(admin, &["exec", "bob", "--", "cat", "/data/secret"]);
    assert_eq!((rc, out.as_str()), (0, "bob-secret\n"));
    record(
        "read or change another bot through any API with a token scoped to this bot (exec, cp, ls, get, stop, delete, snapshot, export, operations)",
        "PERMISSION_DENIED naming the bot; listings show only the token's bots; the other bot unchanged",
    );
    // A token file with a bad line is refused at start, naming the line and not the token.
    std::fs::write(&tokens, format!("{admin}\n{alice} robots=x\n")).unwrap();
    let o = b.second_instance().output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("line 2") && !err.contains(alice), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_bot_egress_policies_are_enforced_changed_and_kept() {
    let mut b = TestBerthd::start_with(None, &["--masquerade", "--reconcile-interval-ms", "300"]);
    let outside = Outside::start();
    let target = format!("{} 9000", outside.addr);
    b.cli(&["bot", "create", "open"]);
    b.cli(&["bot", "create", "closed", "--egress", "none"]);
    b.cli(&["bot", "create", "listed", "--egress", "203.0.113.0/24"]);
    let http = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {target}");
    let reaches = async |b: &TestBerthd, bot: &str| {
        let (rc, out) = attempt(b, bot, &http).await;
        assert!(rc >= 0, "{bot}: {out}");
        rc == 0 && out.contains("200 OK")
    };
    assert!(reaches(&b, "open").await, "the default policy should reach the outside");
    assert!(!reaches(&b, "closed").await, "deny-all reached the outside");
    assert!(!reaches(&b, "listed").await, "an allow-list without the outside reached it");
    record(
        "egress from a bot whose policy is `none`, or an allow-list without the destination",
        "refused (TCP reset); a bot with the default policy reaches the same address",
    );
    // Changed live: applied before the call returns.
    b.cli(&["bot", "egress", "listed", &format!("{}/32", outside.addr)]);
    assert!(reaches(&b, "listed").await, "the allow-list change was not applied");
    b.cli(&["bot", "egress", "open", "none"]);
    assert!(!reaches(&b, "open").await);
    let got: serde_json::Value = serde_json::from_str(&b.cli(&["bot", "get", "open", "--json"])).unwrap();
    assert_eq!(got["egress"], "none");
    // Bad policies are refused, naming the problem.
    let o = b.berth(&["bot", "egress", "open", "10.0.0.0/33"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("egress:"), "{o:?}");
    // Kept across a berthd restart (and re-applied from the database).
    b.halt(libc::SIGKILL);
    sh(&format!("iptables -w 5 -F BERTH-FWD-{}", b.bridge));
    b.spawn();
    assert!(!reaches(&b, "open").await, "the policy was lost in a restart");
    assert!(reaches(&b, "listed").await);
    assert!(!reaches(&b, "closed").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_token_changes_with_every_start_and_the_old_one_is_refused() {
    use berth_control_plane::agent_client::{self, BearerAuth};
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "rotor"]);
    let dir = b.dir.path().join("run/rotor");
    let first = std::fs::read_to_string(dir.join("conf/token")).unwrap();
    let direct = async |token: &str| {
        let c =
            agent_client::connect_unix(&dir.join("sock/agent.sock"), BearerAuth::new(token).unwrap()).await.unwrap();
        let mut c = c;
        c.version(berth_proto::agent::v1::VersionRequest {}).await.map(|_| ()).map_err(|s| s.code())
    };
    assert_eq!(direct(&first).await, Ok(()));
    b.cli(&["bot", "stop", "rotor"]);
    b.cli(&["bot", "start", "rotor"]);
    let second = std::fs::read_to_string(dir.join("conf/token")).unwrap();
    assert_ne!(first, second, "the token did not change with the start");
    assert_eq!(second.len(), 64);
    assert_eq!(direct(&first).await, Err(tonic::Code::Unauthenticated), "the old token still works");
    assert_eq!(direct(&second).await, Ok(()));
    // berthd itself uses the new one.
    assert_eq!(b.sh("rotor", "echo ok").await, "ok\n");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.join("conf/token")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    record(
        "use an agent token seen before the bot's last start (e.g. read from /run/berth/token by an earlier process)",
        "UNAUTHENTICATED: every start writes a new token (0600) and the agent accepts only it",
    );
}

#[test]
fn the_tcp_listener_speaks_tls_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    support::registry::localhost_certificate(dir.path());
    let tokens = dir.path().join("tokens");
    let token = "tls-token-0123456789abcdef";
    std::fs::write(&tokens, format!("{token}\n")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (cert, key, ca) = (dir.path().join("tls.crt"), dir.path().join("tls.key"), dir.path().join("ca.crt"));
    let b = TestBerthd::start_with(
        None,
        &[
            "--listen-tcp",
            &addr,
            "--api-token-file",
            tokens.to_str().unwrap(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ],
    );
    let ls = |url: &str, ca: Option<&std::path::Path>| {
        let mut c = b.berth(&["bot", "ls"]);
        c.env("BERTH_ADDR", url).env("BERTH_TOKEN", token);
        if let Some(ca) = ca {
            c.env("BERTH_CA", ca);
        }
        let o = c.output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (ok, err) = ls(&format!("https://{addr}"), Some(&ca));
    assert!(ok, "TLS with the right CA failed: {err}");
    // Plain HTTP/2 to the TLS port, or TLS without trusting the CA: refused.
    assert!(!ls(&format!("http://{addr}"), None).0, "plaintext was accepted on the TLS port");
    let other = tempfile::tempdir().unwrap();
    support::registry::localhost_certificate(other.path());
    let (ok, err) = ls(&format!("https://{addr}"), Some(&other.path().join("ca.crt")));
    assert!(!ok, "a certificate from another CA was trusted: {err}");
    let (ok, err) = ls(&format!("https://{addr}"), None);
    assert!(!ok && err.contains("BERTH_CA"), "{err}");
    record(
        "talk to berthd's TCP port in plaintext, or trusting another CA",
        "refused: the TCP listener serves TLS (rustls) when given a certificate; a non-loopback listener without TLS is refused at start",
    );
    // A non-loopback plaintext listener is refused at start, naming the setting.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_berthd"))
        .args(["--listen-tcp", "0.0.0.0:1", "--api-token-file", tokens.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("listen_tcp") && err.contains("tls_cert_file"), "{err}");
}

/// Waits until `cond` holds (polling every 100 ms), failing the test after `secs` seconds.
async fn eventually(secs: u64, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bot's agent token as berthd last wrote it on the host.
fn host_token(b: &TestBerthd, bot: &str) -> String {
    std::fs::read_to_string(b.dir.path().join(format!("run/{bot}/conf/token"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_cannot_make_berthd_write_a_host_file_through_its_agent_directory() {
    let b = TestBerthd::start_with(None, &["--reconcile-interval-ms", "300"]);
    b.cli(&["bot", "create", "planter"]);
    let victims = tempfile::tempdir().unwrap();
    let victim = victims.path().join("shadow");
    std::fs::write(&victim, "host secret\n").unwrap();
    let v = victim.display();
    // The attack of the review: links where berthd writes the token, then the agent killed from inside so
    // that the reconciler starts the task again (and berthd writes a new token).
    let (_, out) = attempt(
        &b,
        "planter",
        &format!(
            "for p in /run/berth/.token.tmp /run/berth/token /run/berth/sock/.token.tmp /run/berth/x; do \
               ln -sf {v} $p 2>&1 && echo planted $p; done; \
             touch /run/berth/new 2>&1 || true; mount | grep ' /run/berth'"
        ),
    )
    .await;
    assert!(!out.contains("planted /run/berth/.token.tmp") && !out.contains("planted /run/berth/token"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.contains("/run/berth type") && out.contains("(ro,"), "/run/berth is not read-only: {out}");
    let before = host_token(&b, "planter");
    let _ = attempt(&b, "planter", "kill -TERM 1; sleep 5").await;
    // Control: the agent did die and was started again, so berthd wrote a token (the write the attack aimed at).
    eventually(30, "the reconciler restarted the bot with a new token", async || {
        host_token(&b, "planter") != before
            && b.berth(&["exec", "planter", "--", "true"]).output().unwrap().status.success()
    })
    .await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host secret\n", "berthd wrote through a planted link");
    assert!(b.log().contains("restart"), "{}", b.log());
    record(
        "plant links at /run/berth/.token.tmp and /run/berth/token to a host file, then kill the agent so the task restarts",
        "refused: /run/berth is a read-only mount (berthd writes the token there, O_NOFOLLOW + rename); only /run/berth/sock is writable and berthd never writes in it; the host file is unchanged after the restart",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn berthd_never_dials_a_link_a_bot_puts_in_place_of_its_agent_socket() {
    let mut b = TestBerthd::start_with(None, &["--reconcile-interval-ms", "300"]);
    b.cli(&["bot", "create", "decoy"]);
    // A host socket the bot names: if berthd ever dials it, it accepts.
    let host = tempfile::tempdir().unwrap();
    let target = host.path().join("host.sock");
    let listener = std::os::unix::net::UnixListener::bind(&target).unwrap();
    listener.set_nonblocking(true).unwrap();
    let (code, out) = attempt(
        &b,
        "decoy",
        &format!(
            "rm -f /run/berth/sock/agent.sock && ln -s {} /run/berth/sock/agent.sock && echo swapped",
            target.display()
        ),
    )
    .await;
    assert_eq!((code, out.trim()), (0, "swapped"));
    // berthd's cached connection is to the real agent; a restarted berthd has to dial the path again.
    b.halt(libc::SIGKILL);
    b.spawn();
    let err = b.berth(&["exec", "decoy", "--", "true"]).output().unwrap();
    // The reconciler sees an agent it cannot reach and starts the task again; the agent replaces the link.
    eventually(60, "the bot was healed by a restart", async || {
        b.berth(&["exec", "decoy", "--", "true"]).output().unwrap().status.success()
    })
    .await;
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "berthd dialled the host socket the bot linked to"
    );
    let said = format!("{}{}", String::from_utf8_lossy(&err.stderr), b.log());
    assert!(said.contains("not a socket"), "nothing said why the agent was unreachable: {said}");
    // Control: the host socket was there to be dialled.
    let _c = std::os::unix::net::UnixStream::connect(&target).unwrap();
    assert!(listener.accept().is_ok());
    record(
        "replace /run/berth/sock/agent.sock with a link to a host socket, for berthd to dial",
        "refused: berthd opens the socket without following links (O_PATH | O_NOFOLLOW, must be a socket) and connects through the descriptor; the reconciler restarts the unreachable agent, which replaces the link",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_cannot_move_its_agent_or_anything_between_cgroups() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "mover", "--memory", "256M", "--pids", "200"]);
    let (_, out) = attempt(
        &b,
        "mover",
        "ls -A /run/berth /run/berth/sock; \
         { for f in $(find /run /sys/fs/cgroup -name '*.procs' -o -name tasks); do \
           echo 1 > $f && echo moved-via $f; done; } 2>/dev/null; echo done",
    )
    .await;
    assert!(out.contains("done"), "{out}");
    assert!(!out.contains("moved-via"), "a bot moved its agent: {out}");
    assert!(!out.contains("cgroup"), "a cgroup file or the handoff socket is visible: {out}");
    // The agent (PID 1) is still outside the user cgroup, seen from the host.
    let got: serde_json::Value = serde_json::from_str(&b.cli(&["bot", "get", "mover", "--json"])).unwrap();
    let pid = got["pid"].as_u64().unwrap();
    let agent = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(!agent.contains("/user"), "the agent is in the user cgroup: {agent}");
    // Control: what the agent starts is in the user cgroup (the handoff worked).
    let child = b.sh("mover", "cat /proc/self/cgroup").await;
    let user_lines = child.lines().filter(|l| l.ends_with("/user")).count();
    assert!(user_lines >= 1, "an exec did not join the user cgroup: {child}");
    record(
        "write a pid to the user cgroup's cgroup.procs (e.g. move the agent, PID 1, into it and out of its reserve)",
        "refused: no cgroup.procs of the bot is writable or even visible in it (/sys/fs/cgroup is read-only); berthd hands the agent open descriptors over a one-shot socket, removed before the agent serves",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_created_without_flags_is_bounded_by_the_defaults() {
    // The shipped pids and CPU defaults; memory lowered from 2 GiB so the test does not fill the CI host.
    let b = TestBerthd::start_with(None, &["--default-memory-bytes", "536870912"]);
    b.cli(&["bot", "create", "plain"]);
    b.cli(&["bot", "create", "neighbour"]);
    let got: serde_json::Value = serde_json::from_str(&b.cli(&["bot", "get", "plain", "--json"])).unwrap();
    assert_eq!((got["memory_bytes"].as_u64(), got["pids"].as_u64()), (Some(512 << 20), Some(1024)), "{got}");
    let host_cpus = std::thread::available_parallelism().unwrap().get() as u64;
    assert_eq!(got["cpu_millis"].as_u64(), Some(2000.min(host_cpus * 1000)), "{got}");
    // Processes: 3,000 sleepers asked for; the kernel stops the bot below its default of 1,024 (counted
    // with the shell's own glob: no pid is left to fork `ls`).
    // (ash exits at the first fork refused, leaving the sleepers.)
    let (code, out) =
        attempt(&b, "plain", "i=0; while [ $i -lt 3000 ]; do sleep 60 & i=$((i+1)); done; echo all-started").await;
    assert!(code != 0 && !out.contains("all-started"), "3,000 processes started: {code} {out}");
    let out = b.sh("plain", "set -- /proc/[0-9]*; echo $#").await;
    let running: u64 = out.trim().parse().unwrap();
    assert!((500..=1024).contains(&running), "{running} processes in a bot with the default pids limit");
    // Meanwhile the host and the other bot keep working.
    assert!(Command::new("true").status().unwrap().success(), "the host cannot fork");
    assert_eq!(b.sh("neighbour", "echo fine").await, "fine\n");
    assert_eq!(b.sh("plain", "pkill sleep; echo cleaned").await, "cleaned\n");
    // Memory: 800 MB held in a shell variable, in a bot whose default is 512 MiB.
    let (code, out) = attempt(&b, "plain", "x=$(head -c 800000000 /dev/zero | tr '\\0' a); echo survived").await;
    assert!(code != 0 && !out.contains("survived"), "the hog was not stopped: {code} {out}");
    assert_eq!(b.sh("neighbour", "echo fine").await, "fine\n");
    assert_eq!(b.sh("plain", "echo agent-alive").await, "agent-alive\n");
    record(
        "start 3,000 processes or take 800 MB in a bot created with no limits given",
        "bounded by berthd's defaults (pids 1024, memory default_memory_bytes, CPU 2 cores): fork fails below 1,024 processes, the hog is OOM-killed; the host and a neighbour bot keep working",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_environment_names_out_of_range_are_refused_with_their_bounds() {
    let b = TestBerthd::start(None);
    for (args, expect) in [
        (&["--memory", "1"][..], "memory_bytes = 1 is out of range: it must be between 33554432"),
        (&["--cpus", "0.001"][..], "cpu_millis = 1 is out of range: it must be between 10"),
        (&["--cpus", "0.0001"][..], "less than the smallest CPU limit"),
        (&["--pids", "1"][..], "pids = 1 is out of range: it must be between 32"),
        (&["--memory", "0"][..], "say `unlimited`"),
        (&["-e", "BAD\u{1}KEY=x"][..], "environment variable name"),
    ] {
        let mut cmd = b.berth(&["bot", "create", "bounded"]);
        cmd.args(args);
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(expect), "{args:?}: {err}");
    }
    // Nothing was recorded for the refused creates; the explicit choice of no limit is honoured.
    assert!(!b.cli(&["bot", "ls"]).contains("bounded"));
    b.cli(&["bot", "create", "bounded", "--memory", "unlimited", "--pids", "unlimited", "--cpus", "0.5"]);
    let got: serde_json::Value = serde_json::from_str(&b.cli(&["bot", "get", "bounded", "--json"])).unwrap();
    assert_eq!(
        (got["memory_bytes"].as_u64(), got["pids"].as_u64(), got["cpu_millis"].as_u64()),
        (Some(0), Some(0), Some(500))
    );
    assert_eq!(b.sh("bounded", "echo ok").await, "ok\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_cannot_write_past_its_disk_quota_and_the_others_keep_working() {
    // containerd's root on btrfs, as scripts/run.sh sets it up; a 64 MiB default disk limit.
    let ctd = support::containerd::PrivateContainerd::start_on_btrfs(2048);
    let b = TestBerthd::start_on(ctd, None, &["--default-disk-bytes", "67108864"]);
    b.cli(&["bot", "create", "filler"]);
    b.cli(&["bot", "create", "other", "--disk", "unlimited"]);
    let got: serde_json::Value = serde_json::from_str(&b.cli(&["bot", "get", "filler", "--json"])).unwrap();
    assert_eq!(
        (got["disk_bytes"].as_u64(), got["disk_quota_enforced"].as_bool()),
        (Some(64 << 20), Some(true)),
        "{got}"
    );
    let fill = "dd if=/dev/zero of=/data/fill bs=1M count=200 2>&1; sync; du -m /data/fill | cut -f1";
    let (_, out) = attempt(&b, "filler", fill).await;
    assert!(out.contains("quota exceeded"), "200 MB went into a bot with a 64 MiB quota: {out}");
    let written: u64 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!((32..=64).contains(&written), "{written} MiB written under a 64 MiB quota: {out}");
    // The host, the other bot, containerd (a snapshot) and the full bot's own agent keep working.
    assert_eq!(
        b.sh("other", "dd if=/dev/zero of=/data/big bs=1M count=100 2>/dev/null && echo wrote").await,
        "wrote\n"
    );
    b.cli(&["snapshot", "create", "other", "--name", "fine"]);
    assert_eq!(b.sh("filler", "echo alive").await, "alive\n");
    let got: serde_json::Value = serde_json::from_str(&b.cli(&["bot", "get", "filler", "--json"])).unwrap();
    assert!(got["disk_used_bytes"].as_u64().unwrap() >= 32 << 20, "{got}");
    // Freeing space works; the quota holds across a restart and on the layer a rollback makes.
    assert_eq!(b.sh("filler", "rm /data/fill && echo freed > /data/x && cat /data/x").await, "freed\n");
    b.cli(&["snapshot", "create", "filler", "--name", "small"]);
    b.cli(&["snapshot", "rollback", "filler", "small"]);
    b.cli(&["bot", "stop", "filler"]);
    b.cli(&["bot", "start", "filler"]);
    let (_, out) = attempt(&b, "filler", fill).await;
    assert!(out.contains("quota exceeded"), "the quota was lost in a rollback and restart: {out}");
    record(
        "fill the disk (200 MB into a bot whose default disk limit is 64 MiB)",
        "EDQUOT (\"Disk quota exceeded\") at the limit, in that bot only: another bot writes 100 MB, a snapshot is taken, the full bot's agent answers; the limit holds after a rollback and a restart (btrfs qgroup on the writable layer)",
    );
}

/// A bot created with every default reaches the outside by name: berthd NATs the bots' traffic by
/// default and gives every bot a resolv.conf (the minimal image has none). The outside here has no
/// route back to the bots' subnet (as the internet has none), so only NAT can answer (checked by hand:
/// with `--masquerade false` this test fails at the HTTP step). With egress `none`, a lookup fails at
/// once (refused), not after a resolver timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_bot_resolves_names_and_reaches_the_outside_and_egress_none_fails_at_once() {
    let outside = Outside::start();
    sh(&format!("ip netns exec {} ip route del default", outside.ns));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dns_server.py");
    let mut dns = Command::new("ip")
        .args(["netns", "exec", &outside.ns, "python3", script, &outside.addr, &outside.addr])
        .spawn()
        .unwrap();
    let b = TestBerthd::start_with(None, &["--dns-servers", &outside.addr]);
    b.cli(&["bot", "create", "web"]);
    let resolv = b.sh("web", "cat /etc/resolv.conf").await;
    assert!(resolv.contains(&format!("nameserver {}\n", outside.addr)), "{resolv}");
    // busybox's own resolver (its static wget cannot use glibc's name service; the full image's tools can).
    let (rc, out) = attempt(&b, "web", "nslookup files.example.test").await;
    assert!(rc == 0 && out.contains(&format!("Address: {}", outside.addr)), "the name did not resolve: {out}");
    let http = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {} 9000", outside.addr);
    let (rc, out) = attempt(&b, "web", &http).await;
    assert!(rc == 0 && out.contains("200 OK") && out.trim_end().ends_with("outside"), "through NAT: {out}");
    // The bot cannot rewrite its resolver.
    let (rc, _) = attempt(&b, "web", "echo nameserver 203.0.113.9 > /etc/resolv.conf").await;
    assert_ne!(rc, 0, "the bot's resolv.conf must be read-only");

    b.cli(&["bot", "egress", "web", "none"]);
    let t = Instant::now();
    let (rc, out) = attempt(&b, "web", "nslookup files.example.test").await;
    let took = t.elapsed();
    let _ = dns.kill();
    let _ = dns.wait();
    assert_ne!(rc, 0, "{out}");
    assert!(took < Duration::from_secs(3), "a refused lookup took {took:?} (a resolver timeout): {out}");
    record(
        "egress `none`: a name lookup",
        "fails at once (the query is refused, not dropped), not after the resolver's timeout",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_last_words_reach_the_operator_shown_never_obeyed_or_refused_by_postgres() {
    use berth_proto::controlplane::v1 as pb;
    let pg = support::postgres::PrivatePostgres::start();
    let b = TestBerthd::start_with(Some(pg.database("words")), &["--reconcile-interval-ms", "300"]);
    b.cli(&["bot", "create", "hostile"]);
    let raw = |t: &str| t.chars().any(|c| c.is_control() && c != '\n' && c != '\t');
    // A file name is the bot's too: `berth fs ls` shows it on one line, its escapes written out.
    b.sh("hostile", r#"touch "/data/$(printf 'evil\033]0;pwned\007\nFORGED')""#).await;
    let listed = b.cli(&["fs", "ls", "hostile:/data"]);
    assert!(listed.contains(r"evil\u{1b}]0;pwned\u{7}\u{a}FORGED") && !raw(&listed), "{listed:?}");
    assert!(!listed.lines().any(|l| l.starts_with("FORGED")), "{listed:?}");
    // The bot replaces its agent with one that writes 10 KB, then NUL (which PostgreSQL's text cannot
    // hold), a terminal title change, a screen clear and a C1 CSI, and exits instead of serving: its
    // output is quoted in the start error, the bot's last_error and its event. All of it on stderr: the
    // shim copies stdout and stderr to the log apart, so across the two their order is not kept.
    let script = r#"mv /sbin/berth-agent /sbin/berth-agent.real && cat > /sbin/berth-agent <<'X'
#!/bin/sh
i=0; while [ $i -lt 100 ]; do printf '%0100d\n' 0 >&2; i=$((i+1)); done
printf 'agent refused\000here\033]0;pwned\007\033[2J\302\233done\nFORGED berthd: all is well\n' >&2
sleep 1
exit 3
X
chmod +x /sbin/berth-agent"#;
    b.sh("hostile", script).await;
    b.cli(&["bot", "stop", "hostile"]);
    let o = b.berth(&["bot", "start", "hostile"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success());
    // Control: the agent's words do reach the operator, its control characters written out.
    assert!(err.contains("exited (status 3) instead of serving"), "{err}");
    assert!(err.contains(r"agent refused\u{0}here\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}done"), "{err}");
    assert!(!raw(&err), "a control character reached the terminal: {err:?}");
    // The state change was stored (PostgreSQL refuses a NUL: before, the bot stayed `starting`).
    let mut c = b.bots().await;
    let bot = c.get_bot(pb::GetBotRequest { name: "hostile".into(), ..Default::default() }).await.unwrap();
    let bot = bot.into_inner().bot.unwrap();
    assert_eq!(bot.state, pb::BotState::Error as i32, "{bot:?}");
    assert!(bot.last_error.contains(r"agent refused\u{0}here") && !raw(&bot.last_error), "{bot:?}");
    assert!(bot.last_error.len() <= 4096, "{}", bot.last_error.len());
    let mut events = c
        .watch_events(pb::WatchEventsRequest { name: "hostile".into(), after_id: Some(0) })
        .await
        .unwrap()
        .into_inner();
    let error = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message()).await.unwrap().unwrap().unwrap();
        if e.kind == "error" {
            break e;
        }
    };
    assert!(error.message.contains(r"\u{1b}]0;pwned") && !raw(&error.message), "{error:?}");
    let listed = b.cli(&["bot", "ls"]);
    assert!(listed.contains("hostile") && !raw(&listed), "{listed:?}");
    // berthd's log quotes them too (the reconciler tries to start the bot again and logs why it cannot):
    // on the record's own line, never as a forged one.
    eventually(20, "the reconciler logged the agent's words", async || {
        b.log().lines().any(|l| l.contains("could not reconcile bot") && l.contains("FORGED berthd"))
    })
    .await;
    let log = b.log();
    assert!(!log.lines().any(|l| l.starts_with("FORGED")) && !raw(&log), "a forged log line");
    record(
        "an agent that prints NUL, terminal escapes (title, clear screen, C1 CSI) after 10 KB and exits instead of serving, on PostgreSQL",
        "shown, never obeyed: the start error, last_error, the event, `berth bot ls` and berthd's log carry its words with each control character written out (\\u{1b}; in the log a newline too, so no forged record), cut to 2 KiB; PostgreSQL stores the state change (a raw NUL left the bot `starting`); a file name with escapes and a newline is one line in `berth fs ls`",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_cannot_fill_the_hosts_disk_through_its_task_log() {
    use std::os::unix::fs::MetadataExt;
    let b = TestBerthd::start_with(None, &["--reconcile-interval-ms", "300"]);
    b.cli(&["bot", "create", "chatty"]);
    // The bot wraps its agent: a writer in the background on PID 1's stdout, which the shim copies to a
    // file on the host (outside the bot's disk quota), then the real agent, so the bot stays healthy.
    let script = r#"mv /sbin/berth-agent /sbin/berth-agent.real && cat > /sbin/berth-agent <<'X'
#!/bin/sh
( while :; do dd if=/dev/zero bs=65536 count=16 2>/dev/null; sleep 0.05; done ) &
exec /sbin/berth-agent.real "$@"
X
chmod +x /sbin/berth-agent"#;
    b.sh("chatty", script).await;
    b.cli(&["bot", "stop", "chatty"]);
    b.cli(&["bot", "start", "chatty"]);
    let log = b.dir.path().join("state/logs/bot-chatty.log");
    let held = || std::fs::metadata(&log).map(|m| m.blocks() * 512).unwrap_or(0);
    // Control: the writes reach the host's file, past the bound, and berthd empties it.
    eventually(20, "berthd emptied the task log", async || b.log().contains("emptied a bot's task log")).await;
    let (mut most, t) = (0, Instant::now());
    while t.elapsed() < Duration::from_secs(3) {
        most = most.max(held());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let trims = b.log().matches("emptied a bot's task log").count();
    assert!(trims >= 2, "the writer kept writing, yet the log was emptied {trims} time(s)");
    // The bound (8 MiB) plus what the writer adds in the guard's quarter second, with room for a loaded host.
    assert!(most < 24 << 20, "the task log held {most} bytes");
    assert!(b.berth(&["exec", "chatty", "--", "true"]).output().unwrap().status.success(), "the bot stopped answering");
    record(
        "write without end to PID 1's stdout (a wrapper around the agent with a writer in the background), which containerd's shim copies to a file on the host, outside the bot's disk quota",
        &format!(
            "bounded: berthd empties a task log past 8 MiB (looked at four times a second); at ~20 MB/s the file never held more than {} MiB, and the bot kept answering",
            most >> 20
        ),
    );
}
