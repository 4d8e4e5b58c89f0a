//! How a process ended, in the words the API reports.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

/// Why the process is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Exited,
    Timeout,
    ClientGone,
    Killed,
    ProtocolError,
}

/// The final report of a process.
#[derive(Debug, Clone)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
    pub reason: Reason,
    pub message: String,
}

impl Exit {
    /// Describes `status` given why it ended.
    pub fn new(status: ExitStatus, reason: Reason, timeout_ms: u64) -> Exit {
        let code = status.code();
        let signal = status.signal();
        let how = match (code, signal) {
            (Some(c), _) => format!("exited with code {c}"),
            (None, Some(s)) => format!("killed by {}", signal_name(s)),
            _ => "ended".to_string(),
        };
        let message = match reason {
            Reason::Exited => how,
            Reason::Timeout => format!("{how} after the timeout of {timeout_ms} ms"),
            Reason::ClientGone => format!("{how} because the client went away"),
            Reason::Killed => format!("{how} on request"),
            Reason::ProtocolError => format!("{how} after a protocol error"),
        };
        Exit { code, signal, core_dumped: status.core_dumped(), reason, message }
    }
}

/// `SIGKILL`-style name of a signal number.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}
