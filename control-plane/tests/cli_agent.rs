//! The `berth agent …` CLI against a real agent, run as a user would run it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::common;
use std::process::{Command, Output, Stdio};

use common::*;

fn berth(agent: &TestAgent, args: &[&str]) -> Command {
    let token = agent.dir.path().join("token");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("agent").arg("--socket").arg(&agent.socket).arg("--token-file").arg(&token).args(args);
    cmd
}

fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run berth")
}

#[tokio::test]
async fn exec_propagates_exit_codes_and_streams() {
    let agent = TestAgent::start().await;
    let out = output(berth(&agent, &["exec", "--", "sh", "-c", "echo out; echo err >&2; exit 42"]));
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let out = output(berth(&agent, &["exec", "--", "definitely-missing"]));
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = output(berth(&agent, &["exec", "--timeout-ms", "200", "--", "sleep", "30"]));
    assert_eq!(out.status.code(), Some(137));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout of 200 ms"));
    let out = output(berth(&agent, &["exec", "--timeout", "0.3s", "--", "sleep", "30"]));
    assert_eq!(out.status.code(), Some(137));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout of 300 ms"));
    let out = output(berth(&agent, &["exec", "--timeout", "soon", "--", "true"]));
    assert_eq!(out.status.code(), Some(2), "a bad duration is a usage error");
}

#[tokio::test]
async fn exec_interactive_forwards_stdin_until_eof() {
    let agent = TestAgent::start().await;
    let mut cmd = berth(&agent, &["exec", "-i", "--", "sh", "-c", "tr a-z A-Z; echo done"]);
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"hello\nworld\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\nWORLD\ndone\n");
}

#[tokio::test]
async fn cp_round_trip_ls_and_stat() {
    let agent = TestAgent::start().await;
    let local = agent.dir.path().join("local.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let out = output(berth(&agent, &["cp", "-p", local.to_str().unwrap(), ":deep/dir/copy.bin"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(agent.host("/data/deep/dir/copy.bin")).unwrap(), data);
    let back = agent.dir.path().join("back.bin");
    let out = output(berth(&agent, &["cp", ":deep/dir/copy.bin", back.to_str().unwrap()]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let out = output(berth(&agent, &["ls", "-r"]));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("deep/dir/copy.bin") && listing.contains("3000000"), "{listing}");
    let out = output(berth(&agent, &["stat", "deep/dir/copy.bin"]));
    let stat = String::from_utf8_lossy(&out.stdout);
    assert!(stat.contains("type: file") && stat.contains("size_bytes: 3000000"), "{stat}");
    let out = output(berth(&agent, &["cp", ":missing", back.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
    assert_eq!(std::fs::read(&back).unwrap(), data, "a failed download must not touch the destination");
}

#[tokio::test]
async fn wrong_token_is_a_clear_error() {
    let agent = TestAgent::start().await;
    let bad = agent.dir.path().join("bad-token");
    std::fs::write(&bad, "not-the-token-at-all").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("agent").arg("--socket").arg(&agent.socket).arg("--token-file").arg(&bad).arg("version");
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid agent token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
