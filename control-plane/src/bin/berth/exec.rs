//! `berth agent exec`: run a command in the bot, relay stdio, and exit with its exit code.

use anyhow::Context;
use berth_control_plane::agent_client::AgentClient;
use berth_proto::agent::v1 as pb;
use pb::exec_request::Frame as In;
use pb::exec_response::Frame as Out;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Forward our stdin to the command (otherwise it sees EOF at once).
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Run on a terminal (our terminal goes raw while it runs).
    #[arg(short = 't', long)]
    tty: bool,
    /// Working directory in the bot (default: its data directory).
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Start from an empty environment.
    #[arg(long)]
    clean_env: bool,
    /// Kill the command's process group after this long: `500ms`, `30s`, `5m`, `1h` (a bare number is
    /// seconds; default: never).
    #[arg(long, value_parser = parse_duration, conflicts_with = "timeout_ms")]
    timeout: Option<u64>,
    /// The same in milliseconds (0 = never).
    #[arg(long, default_value_t = 0)]
    timeout_ms: u64,
    /// Start it detached: it keeps running without us, and its id is printed (see `berth ps`, `logs`,
    /// `attach`, `kill`).
    #[arg(short = 'd', long, conflicts_with_all = ["interactive"])]
    pub detach: bool,
    /// A label for a detached process, shown by `berth ps`.
    #[arg(long, requires = "detach", default_value = "")]
    tag: String,
    /// The id of a detached start: the same id never starts a second process (default: a fresh one,
    /// kept across this command's own retries).
    #[arg(long, requires = "detach")]
    pub request_id: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

impl ExecArgs {
    /// What a detached start runs (a terminal of our size with `-t`; stdin stays open for `attach`).
    pub fn detached_start(&self) -> pb::ExecStart {
        let pty = self.tty.then(|| {
            let (rows, cols) = crate::tty::size();
            pb::PtySize { rows, cols }
        });
        pb::ExecStart {
            argv: self.command.clone(),
            cwd: self.cwd.clone().unwrap_or_default(),
            env: self.env.iter().cloned().collect(),
            clean_env: self.clean_env,
            pty,
            timeout_ms: self.timeout.unwrap_or(self.timeout_ms),
            tag: self.tag.clone(),
            ..Default::default()
        }
    }
}

/// A duration such as `500ms`, `30s`, `5m`, `1h` or `2.5` (seconds), in milliseconds.
fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60e3)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600e3)
    } else {
        (t, 1e3)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok((v * unit_ms).round().max(1.0) as u64),
        _ => Err(format!("`{s}` is not a duration like 500ms, 30s, 5m or 1h")),
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn frame(f: In) -> pb::ExecRequest {
    pb::ExecRequest { frame: Some(f) }
}

pub async fn run(mut client: AgentClient, a: ExecArgs) -> anyhow::Result<i32> {
    let pty = a.tty.then(|| {
        let (rows, cols) = crate::tty::size();
        pb::PtySize { rows, cols }
    });
    let start = pb::ExecStart {
        argv: a.command.clone(),
        cwd: a.cwd.clone().unwrap_or_default(),
        env: a.env.iter().cloned().collect(),
        clean_env: a.clean_env,
        pty,
        timeout_ms: a.timeout.unwrap_or(a.timeout_ms),
        close_stdin: !a.interactive,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(16);
    tx.send(frame(In::Start(start))).await.context("exec stream closed")?;
    let mut responses = match client.exec(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Ok(report_start_failure(&status)),
    };
    let _raw = if a.tty { crate::tty::RawMode::enter() } else { None };
    if a.interactive {
        tokio::spawn(forward_stdin(tx.clone()));
    }
    if a.tty {
        tokio::spawn(forward_resizes(tx.clone()));
    }
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    loop {
        let msg = match responses.message().await {
            Ok(Some(m)) => m,
            Ok(None) => anyhow::bail!("the agent ended the exec stream without an exit status"),
            Err(status) => return Ok(report_start_failure(&status)),
        };
        match msg.frame {
            Some(Out::Stdout(b)) => {
                stdout.write_all(&b).await?;
                stdout.flush().await?;
            }
            Some(Out::Stderr(b)) => {
                stderr.write_all(&b).await?;
                stderr.flush().await?;
            }
            Some(Out::Exited(e)) => {
                drop(_raw);
                if e.reason != pb::ExitReason::Exited as i32 {
                    eprintln!("berth: {}", crate::shown(&e.message));
                }
                return Ok(match (e.exit_code, e.signal) {
                    (Some(c), _) => c,
                    (None, Some(s)) => 128 + s,
                    _ => 1,
                });
            }
            Some(Out::Started(_)) | None => {}
        }
    }
}

/// Prints why the command could not run and returns the shell's conventional code.
fn report_start_failure(status: &tonic::Status) -> i32 {
    eprintln!("berth: {}", crate::shown(status.message()));
    match status.code() {
        tonic::Code::NotFound => 127,
        tonic::Code::PermissionDenied => 126,
        _ => 1,
    }
}

async fn forward_stdin(tx: mpsc::Sender<pb::ExecRequest>) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send(frame(In::Stdin(buf[..n].to_vec()))).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = tx.send(frame(In::CloseStdin(pb::CloseStdin {}))).await;
}

async fn forward_resizes(tx: mpsc::Sender<pb::ExecRequest>) {
    let Ok(mut winch) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        let (rows, cols) = crate::tty::size();
        if tx.send(frame(In::Resize(pb::PtySize { rows, cols }))).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("500ms"), Ok(500));
        assert_eq!(super::parse_duration("30s"), Ok(30_000));
        assert_eq!(super::parse_duration("1.5m"), Ok(90_000));
        assert_eq!(super::parse_duration("1h"), Ok(3_600_000));
        assert_eq!(super::parse_duration("2"), Ok(2_000));
        for bad in ["", "0", "-1s", "abc", "5d"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }
}
