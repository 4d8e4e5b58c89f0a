//! The spill file: events that could not be stored yet, one JSON object per line, appended and synced
//! before the writer moves on, read back in order and removed once stored. It lives in berthd's own
//! state directory (no bot can write there) and is opened without following links all the same. A torn
//! last line (berthd died mid-append) is cut off when the file is opened, and an append that fails
//! (a full disk) is taken back, so a new line never joins a broken one; a line that cannot be read is
//! skipped with a warning, the others kept.

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
        if let Err(e) = s.cut_torn_line() {
            tracing::error!(file = %s.path.display(), error = %e, "cannot check the event spill file's end");
        }
        s.pending = match s.read() {
            Ok(v) => v.len(),
            Err(e) => {
                tracing::error!(file = %s.path.display(), error = %e, "cannot read the event spill file");
                0
            }
        };
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
        let len = f.metadata()?.len();
        if len + text.len() as u64 > MAX_BYTES {
            return Err(std::io::Error::other(format!("the spill file is full ({MAX_BYTES} bytes)")));
        }
        if let Err(e) = f.write_all(&text).and_then(|()| f.sync_data()) {
            // Take the partial append back: the next one must start on a line of its own.
            let _ = f.set_len(len);
            return Err(e);
        }
        self.pending += events.len();
        crate::metrics::metrics().events_spilled.set(self.pending as i64);
        Ok(())
    }

    /// The file's bytes (none when there is no file).
    fn bytes(&self) -> std::io::Result<Vec<u8>> {
        match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&self.path) {
            Ok(mut f) => {
                let mut b = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut b)?;
                Ok(b)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Cuts a last line that has no end (berthd died while appending it).
    fn cut_torn_line(&self) -> std::io::Result<()> {
        let b = self.bytes()?;
        if b.is_empty() || b.ends_with(b"\n") {
            return Ok(());
        }
        let keep = b.iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1);
        tracing::warn!(file = %self.path.display(), bytes = b.len() - keep, "cutting a torn event off the spill file");
        let f = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NOFOLLOW).open(&self.path)?;
        f.set_len(keep as u64)?;
        f.sync_data()
    }

    /// The events in the file, in order.
    pub(super) fn read(&self) -> std::io::Result<Vec<BotEvent>> {
        let bytes = self.bytes()?;
        let mut out = Vec::new();
        for (n, line) in bytes.split(|&c| c == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let parsed = serde_json::from_slice::<Line>(line).ok().and_then(|l| {
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
        let mut again = Spill::new(path.clone());
        assert!(again.pending());
        assert_eq!(again.read().unwrap(), vec![ev(1), ev(2), ev(3)]);
        // The torn line is gone, so the next append starts a line of its own; a line that is not an event
        // (cut inside a multi-byte character) is skipped, the rest kept.
        again.append(&[ev(5)]).unwrap();
        assert_eq!(again.read().unwrap(), vec![ev(1), ev(2), ev(3), ev(5)]);
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"id\":\"\xc3\n").unwrap();
        again.append(&[ev(6)]).unwrap();
        assert_eq!(again.read().unwrap(), vec![ev(1), ev(2), ev(3), ev(5), ev(6)]);
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
