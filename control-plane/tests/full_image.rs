//! The `full` image (debootstrap + nodejs, npm, python3; scripts/build-image.sh full) as real bots use it:
//! node, npx and python3 run in a bot, and a real MCP server (server-everything, put into the bot's /data
//! with `berth data import`) passes the black-box MCP probe through `berth mcp BOT -- …` exactly as it
//! does when run directly on the host.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use common::{dep, mcp_probe_script, run_mcp_probe};
use support::berthd::TestBerthd;
use support::containerd::full_image;

/// The probe's summary line ("N passed, N failed…") and its whole output.
fn probe(server: &[String]) -> (String, String) {
    let script = mcp_probe_script().display().to_string();
    let args = [&script, "--checks", "all", "--mode", "auto", "--timeout", "60", "--"];
    run_mcp_probe(&[&args.map(String::from)[..], server].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_python_and_an_mcp_server_run_in_a_full_bot() {
    let image = full_image();
    let b = TestBerthd::start_with(None, &["--image-archive", image.to_str().unwrap()]);
    b.cli(&["bot", "create", "tools", "--image", "berth/full:latest"]);
    let node = b.sh("tools", "node --version").await;
    assert!(node.starts_with('v'), "{node}");
    assert_eq!(b.sh("tools", "python3 -c 'print(6 * 7)'").await, "42\n");
    assert!(!b.sh("tools", "npx --version").await.trim().is_empty());
    b.sh("tools", "python3 -m venv /data/venv && /data/venv/bin/python -c 'import sys; print(sys.prefix)'").await;

    // server-everything and its dependencies into /data, as an archive through the API.
    let js = b.install_everything("tools").await;
    let modules = dep("node/node_modules");
    let host_js = modules.join("@modelcontextprotocol/server-everything/dist/index.js");
    let direct = vec!["node".to_string(), host_js.display().to_string(), "stdio".into()];
    let bridged: Vec<String> = [
        env!("CARGO_BIN_EXE_berth"),
        "--addr",
        b.socket.to_str().unwrap(),
        "mcp",
        "tools",
        "--quiet",
        "--",
        "node",
        &js,
        "stdio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (d, dlog) = tokio::task::spawn_blocking(move || probe(&direct)).await.unwrap();
    let (v, vlog) = tokio::task::spawn_blocking(move || probe(&bridged)).await.unwrap();
    assert!(d.starts_with("9 passed, 0 failed"), "direct: {d}\n{dlog}");
    assert_eq!(v, d, "through berthd into the bot differs from direct\n{vlog}\n{}", b.log());
}
