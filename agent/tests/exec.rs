//! Exec through the real agent: exit codes, stdio, EOF, typed spawn failures, timeouts and disconnects
//! that kill whole process groups, signals, ptys, sessions, reaping and shutdown.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::common;
use std::time::Duration;

use berth_proto::agent::v1 as pb;
use common::*;
use pb::exec_request::Frame as In;

fn frame(f: In) -> pb::ExecRequest {
    pb::ExecRequest { frame: Some(f) }
}

#[tokio::test]
async fn exit_code_and_separate_streams() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let r = run(&mut c, argv(&["sh", "-c", "echo out; echo err >&2; exit 7"])).await.unwrap();
    assert_eq!(r.stdout_str(), "out\n");
    assert_eq!(r.stderr, b"err\n");
    assert_eq!(r.code(), Some(7));
    assert_eq!(r.reason(), pb::ExitReason::Exited);
    assert!(r.started.unwrap().pid > 1);
}

#[tokio::test]
async fn shell_string_env_and_cwd() {
    let agent = TestAgent::start().await;
    std::fs::create_dir(agent.host("/data/sub")).unwrap();
    let mut c = agent.client().await;
    let start = pb::ExecStart {
        shell: "echo \"$GREETING\" && pwd".into(),
        cwd: "sub".into(),
        env: [("GREETING".to_string(), "hello there".to_string())].into(),
        close_stdin: true,
        ..Default::default()
    };
    let r = run(&mut c, start).await.unwrap();
    let expected = format!("hello there\n{}\n", agent.host("/data/sub").display());
    assert_eq!(r.stdout_str(), expected);
    let start = pb::ExecStart {
        argv: vec!["/usr/bin/env".into()],
        clean_env: true,
        env: [("ONLY".to_string(), "1".to_string())].into(),
        close_stdin: true,
        ..Default::default()
    };
    let r = run(&mut c, start).await.unwrap();
    assert_eq!(r.stdout_str(), "ONLY=1\n");
}

#[tokio::test]
async fn stdin_in_first_frame_then_frames_then_half_close() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let start = pb::ExecStart { argv: vec!["cat".into()], stdin: b"first ".to_vec(), ..Default::default() };
    let (tx, mut stream) = exec_open(&mut c, start).await.unwrap();
    tx.send(frame(In::Stdin(b"second ".to_vec()))).await.unwrap();
    tx.send(frame(In::Stdin(b"third".to_vec()))).await.unwrap();
    drop(tx); // half-close = EOF for cat
    let r = collect(&mut stream).await.unwrap();
    assert_eq!(r.stdout_str(), "first second third");
    assert_eq!(r.code(), Some(0));
}

#[tokio::test]
async fn close_stdin_frame_is_eof() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let start = pb::ExecStart { argv: vec!["wc".into(), "-c".into()], ..Default::default() };
    let (tx, mut stream) = exec_open(&mut c, start).await.unwrap();
    tx.send(frame(In::Stdin(vec![b'x'; 100_000]))).await.unwrap();
    tx.send(frame(In::CloseStdin(pb::CloseStdin {}))).await.unwrap();
    let r = collect(&mut stream).await.unwrap();
    assert_eq!(r.stdout_str().trim(), "100000");
    drop(tx);
}

#[tokio::test]
async fn missing_binary_and_bad_cwd_fail_at_once_with_typed_errors() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let t = std::time::Instant::now();
    let err = run(&mut c, argv(&["no-such-binary-xyz"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("no-such-binary-xyz"), "{}", err.message());
    let err = run(&mut c, argv(&["/data/missing/tool"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = run(&mut c, pb::ExecStart { cwd: "/nope".into(), ..argv(&["true"]) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("working directory"), "{}", err.message());
    std::fs::write(agent.host("/data/file"), b"x").unwrap();
    let err = run(&mut c, pb::ExecStart { cwd: "file".into(), ..argv(&["true"]) }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    std::fs::write(agent.host("/data/noexec"), b"#!/bin/sh\n").unwrap();
    let err = run(&mut c, argv(&[agent.host("/data/noexec").to_str().unwrap()])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let err = run(&mut c, pb::ExecStart::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(t.elapsed() < Duration::from_secs(10), "spawn failures must not wait for anything");
}

#[tokio::test]
async fn timeout_kills_the_process_group_even_with_a_grandchild_holding_the_pipe() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let pidfile = agent.host("/data/grandchild.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let start = pb::ExecStart { timeout_ms: 300, ..argv(&["sh", "-c", &script]) };
    let r = run(&mut c, start).await.unwrap();
    assert_eq!(r.reason(), pb::ExitReason::Timeout);
    let e = r.exited.as_ref().unwrap();
    assert_eq!(e.signal, Some(9));
    assert!(e.message.contains("timeout of 300 ms"), "{}", e.message);
    let gc: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(eventually(Duration::from_secs(5), || !alive(gc)).await, "grandchild {gc} survived the timeout");
}

#[tokio::test]
async fn background_grandchild_does_not_hang_a_finished_exec_and_keeps_running() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    // The grandchild keeps stdout open; the exec must still end promptly with the parent's code.
    let t = std::time::Instant::now();
    let pidfile = agent.host("/data/bg.pid");
    let script = format!("sleep 30 & echo $! > {}; echo started; exit 4", pidfile.display());
    let r = run(&mut c, argv(&["sh", "-c", &script])).await.unwrap();
    assert_eq!(r.code(), Some(4));
    assert_eq!(r.stdout_str(), "started\n");
    assert!(t.elapsed() < Duration::from_secs(10));
    // An exec that ends on its own leaves what it started in the background running (the documented
    // rule; a client that goes away kills the group instead, below).
    let pid: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(alive(pid), "the background sleep was killed with its exec");
    let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
}

#[tokio::test]
async fn client_disconnect_kills_the_process_group() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let pidfile = agent.host("/data/gc.pid");
    let script = format!("sleep 300 & echo $! > {}; echo ready; wait", pidfile.display());
    let (tx, mut stream) = exec_open(&mut c, argv(&["sh", "-c", &script])).await.unwrap();
    let mut pid = 0;
    loop {
        match stream.message().await.unwrap().unwrap().frame {
            Some(pb::exec_response::Frame::Started(s)) => pid = s.pid,
            Some(pb::exec_response::Frame::Stdout(_)) => break,
            _ => {}
        }
    }
    let gc: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    assert!(alive(pid) && alive(gc));
    drop(stream);
    drop(tx);
    drop(c);
    assert!(eventually(Duration::from_secs(5), || !alive(pid) && !alive(gc)).await, "processes survived disconnect");
    let mut c = agent.client().await;
    let sessions = c.list_sessions(pb::ListSessionsRequest {}).await.unwrap().into_inner().sessions;
    assert!(sessions.is_empty(), "{sessions:?}");
}

#[tokio::test]
async fn signal_frame_reaches_the_group() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let start = pb::ExecStart { argv: vec!["sleep".into(), "300".into()], ..Default::default() };
    let (tx, mut stream) = exec_open(&mut c, start).await.unwrap();
    tx.send(frame(In::Signal(pb::ExecSignal { signal: 15 }))).await.unwrap();
    let r = collect(&mut stream).await.unwrap();
    assert_eq!(r.exited.as_ref().unwrap().signal, Some(15));
    assert_eq!(r.reason(), pb::ExitReason::Exited);
}

#[tokio::test]
async fn bad_frames_are_rejected_without_crashing_the_agent() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    // First frame is not `start`.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(frame(In::Stdin(b"x".to_vec()))).await.unwrap();
    let err = c.exec(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // A second `start` ends the stream with INVALID_ARGUMENT and kills the process.
    let (tx, mut stream) = exec_open(&mut c, argv(&["sleep", "300"])).await.unwrap();
    tx.send(frame(In::Start(argv(&["true"])))).await.unwrap();
    let err = collect(&mut stream).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // Invalid signal number.
    let (tx, mut stream) = exec_open(&mut c, argv(&["sleep", "300"])).await.unwrap();
    tx.send(frame(In::Signal(pb::ExecSignal { signal: 999 }))).await.unwrap();
    assert_eq!(collect(&mut stream).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    // The agent is still serving.
    assert_eq!(run(&mut c, argv(&["true"])).await.unwrap().code(), Some(0));
}

#[tokio::test]
async fn pty_runs_on_a_terminal_and_resizes() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let start = pb::ExecStart {
        argv: vec!["sh".into(), "-c".into(), "stty size; read line; stty size; echo got:$line".into()],
        pty: Some(pb::PtySize { rows: 30, cols: 100 }),
        ..Default::default()
    };
    let (tx, mut stream) = exec_open(&mut c, start).await.unwrap();
    let mut seen = String::new();
    while !seen.contains("30 100") {
        if let Some(pb::exec_response::Frame::Stdout(b)) = stream.message().await.unwrap().unwrap().frame {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
    }
    tx.send(frame(In::Resize(pb::PtySize { rows: 50, cols: 132 }))).await.unwrap();
    tx.send(frame(In::Stdin(b"hello\n".to_vec()))).await.unwrap();
    let r = collect(&mut stream).await.unwrap();
    let out = r.stdout_str();
    assert!(out.contains("50 132"), "{out:?}");
    assert!(out.contains("got:hello"), "{out:?}");
    assert!(r.stderr.is_empty());
    assert_eq!(r.code(), Some(0));
}

#[tokio::test]
async fn sessions_are_listed_and_killable() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let start = pb::ExecStart { tag: "sleeper".into(), ..argv(&["sleep", "300"]) };
    let (_tx, mut stream) = exec_open(&mut c, start).await.unwrap();
    let sessions = c.list_sessions(pb::ListSessionsRequest {}).await.unwrap().into_inner().sessions;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].tag, "sleeper");
    assert_eq!(sessions[0].kind, pb::SessionKind::Exec as i32);
    let stats = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.exec_sessions, 1);
    let id = sessions[0].session_id.clone();
    c.kill_session(pb::KillSessionRequest { session_id: id.clone(), signal: 0 }).await.unwrap();
    let r = collect(&mut stream).await.unwrap();
    assert_eq!(r.reason(), pb::ExitReason::Killed);
    let err = c.kill_session(pb::KillSessionRequest { session_id: id, signal: 0 }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn orphans_are_reaped() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    // The shell exits at once; its background child becomes the agent's (subreaper) and then exits.
    let r = run(&mut c, argv(&["sh", "-c", "(sleep 0.2; exit 0) >/dev/null 2>&1 & exit 0"])).await.unwrap();
    assert_eq!(r.code(), Some(0));
    let agent_pid = agent.pid() as i32;
    let mut reaped = false;
    for _ in 0..200 {
        let stats = c.stats(pb::StatsRequest {}).await.unwrap().into_inner();
        let zombies = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
            .filter(|s| {
                let rest = s.rsplit_once(')').map(|(_, r)| r.to_string()).unwrap_or_default();
                let mut f = rest.split_whitespace();
                f.next() == Some("Z") && f.next().and_then(|p| p.parse::<i32>().ok()) == Some(agent_pid)
            })
            .count();
        if stats.zombies_reaped >= 1 && zombies == 0 {
            reaped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reaped, "orphan was not reaped");
}

#[tokio::test]
async fn sigterm_ends_sessions_and_the_agent_exits_cleanly() {
    let mut agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let (_tx, mut stream) = exec_open(&mut c, argv(&["sleep", "300"])).await.unwrap();
    let pid = match stream.message().await.unwrap().unwrap().frame {
        Some(pb::exec_response::Frame::Started(s)) => s.pid,
        other => panic!("expected started, got {other:?}"),
    };
    let status = agent.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!alive(pid), "session process survived agent shutdown");
    assert!(!agent.socket.exists(), "socket left behind");
}

#[tokio::test]
async fn no_timeout_unless_asked() {
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let r = run(&mut c, argv(&["sleep", "1.5"])).await.unwrap();
    assert_eq!(r.code(), Some(0));
    assert_eq!(r.reason(), pb::ExitReason::Exited);
}
