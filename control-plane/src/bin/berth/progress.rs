//! A one-line progress display for long transfers (cp, data export/import), on stderr and only when stderr
//! is a terminal, so scripts and pipes see nothing of it.

use std::io::IsTerminal;
use std::time::Instant;

/// A one-line progress display on stderr, shown only on a terminal.
pub struct Progress {
    what: &'static str,
    total: Option<u64>,
    pub done: u64,
    start: Instant,
    last: Instant,
    shown: bool,
}

impl Progress {
    pub fn new(what: &'static str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress { what, total, done: 0, start: now, last: now, shown: std::io::stderr().is_terminal() }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.shown && self.last.elapsed().as_millis() >= 200 {
            self.last = Instant::now();
            self.draw();
        }
    }

    fn draw(&self) {
        let mib = self.done as f64 / (1 << 20) as f64;
        let rate = mib / self.start.elapsed().as_secs_f64().max(0.001);
        let line = match self.total {
            Some(t) if t > 0 => {
                let pct = (self.done as f64 * 100.0 / t as f64).min(100.0);
                let filled = (pct / 5.0) as usize;
                format!(
                    "{} [{}{}] {pct:5.1}% {mib:.1} MiB {rate:.1} MiB/s",
                    self.what,
                    "#".repeat(filled),
                    " ".repeat(20 - filled)
                )
            }
            _ => format!("{} {mib:.1} MiB {rate:.1} MiB/s", self.what),
        };
        eprint!("\r{line}\x1b[K");
    }

    pub fn finish(&self) {
        if self.shown {
            self.draw();
            eprintln!();
        }
    }
}
