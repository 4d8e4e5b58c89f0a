//! Clients we did not write, as a new user would first try them: Python `grpcio` with default options on
//! berthd's Unix socket (grpc-core sends the socket path as `:authority`), discovering the API through
//! `v1alpha` reflection and driving a bot from create to delete; Python's `h2` sending the raw socket path
//! Huffman-coded, as netty (grpc-java) does.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use support::berthd::TestBerthd;

#[test]
fn python_grpcio_with_default_options_drives_a_bot_through_reflection() {
    // Tokens configured (as the MCP front-end needs them): the socket still takes no token.
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "py-token-0123456789abcdef\n").unwrap();
    let b = TestBerthd::start_with(None, &["--api-token-file", tokens.to_str().unwrap()]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/grpc_python_client.py");
    let out = std::process::Command::new(common::dep("venv/bin/python"))
        .args([script, b.socket.to_str().unwrap(), "py-bot"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python client failed:\n{stdout}\n{}\n--- berthd log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        b.log()
    );
    for step in [
        "reflection lists",
        "descriptors carry comments",
        "created py-bot BOT_STATE_RUNNING",
        "exec:",
        "upload and download",
        "deleted py-bot",
    ] {
        assert!(stdout.contains(step), "missing step {step:?}:\n{stdout}");
    }
    // The rewrite of the socket path is said once, not per call.
    assert_eq!(b.log().matches("sent a socket path as its :authority").count(), 1, "{}", b.log());
}

/// netty (grpc-java) sends the raw socket path as `:authority`, Huffman-coded: here Python's `h2` and
/// `hpack` libraries make the same request, and berthd answers it rather than resetting the stream.
#[test]
fn a_huffman_coded_socket_path_authority_is_accepted() {
    let b = TestBerthd::start(None);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/h2_huffman_client.py");
    let out = std::process::Command::new(common::dep("venv/bin/python"))
        .args([script, b.socket.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n--- berthd log ---\n{}", b.log());
    assert!(stdout.contains("authority huffman"), "the control failed: {stdout}");
    assert!(stdout.contains("status 0") && stdout.contains("serving"), "{stdout}");
    // A request HTTP/2 forbids (an upper-case header name) is still refused, and berthd's log says why, once.
    for _ in 0..2 {
        let out = std::process::Command::new(common::dep("venv/bin/python"))
            .args([script, b.socket.to_str().unwrap(), "--bad"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("refused"), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(b.log().matches("an upper-case header name").count(), 1, "{}", b.log());
}
