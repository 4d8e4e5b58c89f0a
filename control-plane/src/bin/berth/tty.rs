//! The local terminal: raw mode for `exec -t`, and its size.

use std::os::fd::AsFd;

use rustix::termios::{self, OptionalActions, Termios};

/// Puts the terminal on stdin into raw mode until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Enters raw mode if stdin is a terminal; `None` otherwise.
    pub fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let fd = stdin.as_fd();
        if !termios::isatty(fd) {
            return None;
        }
        let saved = termios::tcgetattr(fd).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(fd, OptionalActions::Now, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Now, &self.saved);
    }
}

/// (rows, cols) of the terminal on stdout, or 24x80.
pub fn size() -> (u32, u32) {
    match termios::tcgetwinsize(std::io::stdout().as_fd()) {
        Ok(ws) if ws.ws_row > 0 && ws.ws_col > 0 => (u32::from(ws.ws_row), u32::from(ws.ws_col)),
        _ => (24, 80),
    }
}
