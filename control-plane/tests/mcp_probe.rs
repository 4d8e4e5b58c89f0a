//! MCP acceptance: the black-box probe (`shared/tools/mcp_probe.py`, Python `mcp==2.3.0`) run against real
//! servers directly and through `berth agent … mcp --`, with the server started by the real agent. The
//! bridge must pass exactly what the server passes directly.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::common;
use std::time::Duration;

use common::*;

/// Runs the probe against `server` and returns its summary line ("N passed, N failed[, N skipped]").
fn probe(mode: &str, server: &[String]) -> (String, String) {
    let script = mcp_probe_script().display().to_string();
    let args = [&script, "--checks", "all", "--mode", mode, "--timeout", "30", "--"];
    run_mcp_probe(&[&args.map(String::from)[..], server].concat())
}

fn bridged(agent: &TestAgent, server: &[String]) -> Vec<String> {
    let mut v = vec![
        env!("CARGO_BIN_EXE_berth").to_string(),
        "agent".into(),
        "--socket".into(),
        agent.socket.display().to_string(),
        "--token-file".into(),
        agent.dir.path().join("token").display().to_string(),
        "mcp".into(),
        "--quiet".into(),
        "--".into(),
    ];
    v.extend(server.iter().cloned());
    v
}

async fn same_result_direct_and_bridged(mode: &str, server: Vec<String>, expect_passed: u32) {
    let agent = TestAgent::start().await;
    let direct_server = server.clone();
    let mode_owned = mode.to_string();
    let (direct, direct_log) = tokio::task::spawn_blocking(move || probe(&mode_owned, &direct_server)).await.unwrap();
    let via = bridged(&agent, &server);
    let mode_owned = mode.to_string();
    let (bridge, bridge_log) = tokio::task::spawn_blocking(move || probe(&mode_owned, &via)).await.unwrap();
    assert!(direct.starts_with(&format!("{expect_passed} passed, 0 failed")), "direct run: {direct}\n{direct_log}");
    assert_eq!(bridge, direct, "bridge differs from direct\n--- bridge log ---\n{bridge_log}");
    // The bridge cleaned up: no session and no child left in the agent.
    let mut c = agent.client().await;
    let ok = eventually(Duration::from_secs(10), || children_of_agent(&agent).is_empty()).await;
    assert!(ok, "processes left behind: {:?}", children_of_agent(&agent));
    let s = c.stats(berth_proto::agent::v1::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(s.mcp_sessions, 0);
}

fn children_of_agent(agent: &TestAgent) -> Vec<u32> {
    let me = agent.pid().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let rest = stat.rsplit_once(')')?.1.to_string();
            let ppid = rest.split_whitespace().nth(1)?.to_string();
            (ppid == me).then(|| e.file_name().to_string_lossy().parse().ok()).flatten()
        })
        .collect()
}

fn everything() -> Vec<String> {
    let js = dep("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    vec!["node".into(), js.display().to_string(), "stdio".into()]
}

fn python_fixture() -> Vec<String> {
    vec![dep("venv/bin/python").display().to_string(), fixture("mcp_fixture.py")]
}

#[tokio::test]
async fn server_everything_passes_all_nine_checks_through_the_bridge() {
    same_result_direct_and_bridged("auto", everything(), 9).await;
}

#[tokio::test]
async fn python_fixture_auto_mode() {
    same_result_direct_and_bridged("auto", python_fixture(), 6).await;
}

#[tokio::test]
async fn python_fixture_legacy_mode() {
    same_result_direct_and_bridged("legacy", python_fixture(), 7).await;
}

#[tokio::test]
async fn python_fixture_2026_07_28_mode() {
    same_result_direct_and_bridged("2026-07-28", python_fixture(), 6).await;
}
