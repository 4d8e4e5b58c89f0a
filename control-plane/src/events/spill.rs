//! The spill file: events that could not be stored yet, one JSON object per line, appended and synced
//! before the writer moves on, read back in order and removed once stored. It lives in berthd's own
//! state directory (no bot can write there) and is opened without following links all the same. A torn
//! last line (berthd died mid-append) is skipped with a warning; the events before it are kept.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::BotEvent;
use crate::store::records::BotState;

/// The most the spill file may hold (about 100,000 events); past it new events are dropped and counted.
const MAX_BYTES: u64 = 32 << 20;

#[derive(Serialize, Deserialize)]
struct Line {
    id: String,
    name: String,
    kind: String,
    state: String,
    message: String,
    at_ms: i64,
    node: String,
}

#[derive(Debug)]
pub(super) struct Spill {
    path: PathBuf,
    /// Events in the file (as far as this process knows; counted at start).
    pending: usize,
}

impl Spill {
    pub(super) fn new(path: PathBuf) -> Spill {
        let mut s = Spill { path, pending: 0 };
        s.pending = s.read().map(|v| v.len()).unwrap_or(0);
        crate::metrics::metrics().events_spilled.set(s.pending as i64);
        s
    }

    /// Whether events wait in the file (new ones must then go after them).
    pub(super) fn pending(&self) -> bool {
        self.pending > 0
    }

    /// Appends `events` and syncs them to disk.
    pub(super) fn append(&mut self, events: &[BotEvent]) -> std::io::Result<()> {
        let mut text = Vec::new();
        for e in events {
            let line = Line {
                id: e.id.clone(),
                name: e.name.clone(),
                kind: e.kind.clone(),
                state: e.state.as_str().to_string(),
                message: e.message.clone(),
                at_ms: e.at_ms,
                node: e.node.clone(),
            };
            serde_json::to_writer(&mut text, &line).map_err(std::io::Error::other)?;
            text.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)?;
        if f.metadata()?.len() + text.len() as u64 > MAX_BYTES {
            return Err(std::io::Error::other(format!("the spill file is full ({MAX_BYTES} bytes)")));
        }
        f.write_all(&text)?;
        f.sync_data()?;
        self.pending += events.len();
        crate::metrics::metrics().events_spilled.set(self.pending as i64);
        Ok(())
    }

    /// The events in the file, in order.
    pub(super) fn read(&self) -> std::io::Result<Vec<BotEvent>> {
        let text = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&self.path) {
            Ok(mut f) => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut f, &mut s)?;
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let parsed = serde_json::from_str::<Line>(line).ok().and_then(|l| {
                Some(BotEvent {
                    state: BotState::parse(&l.state)?,
                    id: l.id,
                    seq: 0,
                    name: l.name,
                    kind: l.kind,
                    message: l.message,
                    at_ms: l.at_ms,
                    node: l.node,
                })
            });
            match parsed {
                Some(e) => out.push(e),
                None => {
                    tracing::warn!(file = %self.path.display(), line = n + 1, "skipping an unreadable spilled event")
                }
            }
        }
        Ok(out)
    }

    /// Forgets the file once its events are stored.
    pub(super) fn clear(&mut self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.pending = 0;
        crate::metrics::metrics().events_spilled.set(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: u32) -> BotEvent {
        BotEvent {
            id: format!("id-{n}"),
            seq: 0,
            name: format!("bot{n}"),
            kind: "started".into(),
            state: BotState::Running,
            message: "a \"quoted\"\nmessage".into(),
            at_ms: i64::from(n),
            node: "n1".into(),
        }
    }

    #[test]
    fn appends_read_back_in_order_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.spill");
        let mut s = Spill::new(path.clone());
        assert!(!s.pending());
        s.append(&[ev(1), ev(2)]).unwrap();
        s.append(&[ev(3)]).unwrap();
        // berthd died in the middle of the next append.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"id\":\"id-4\",\"na").unwrap();
        let again = Spill::new(path.clone());
        assert!(again.pending());
        let read = again.read().unwrap();
        assert_eq!(read, vec![ev(1), ev(2), ev(3)]);
        s.clear().unwrap();
        assert!(!s.pending());
        assert!(!path.exists());
    }

    #[test]
    fn a_link_in_place_of_the_file_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("events.spill");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let mut s = Spill { path, pending: 0 };
        assert!(s.append(&[ev(1)]).is_err());
        assert!(s.read().is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }
}
