//! A detached process's output journal: the bytes of one stream (stdout, stderr, or a terminal's
//! output), addressed by their offset since the process started, kept in segment files in a directory
//! of the agent's and bounded: when the kept bytes pass the limit, the oldest whole segments are
//! dropped. A reader asks for any offset it holds and gets the bytes from there; an offset already
//! dropped is refused with the first one still kept, never answered with a gap.
//!
//! Only the page cache holds the bytes, so the agent's own memory does not grow with the output. The
//! segments are named by their first offset (20 decimal digits), so a journal reopens after an agent
//! restart with its offsets intact. The bot can tamper with these files (it is root in its container,
//! like the agent): they are opened without following links, and what is read goes to a client as
//! plain bytes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

/// Where a journal stands: bytes `[first, end)` are kept; `finished` once nothing more will come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub first: u64,
    pub end: u64,
    pub finished: bool,
}

/// Why a read was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("output before offset {first} was dropped (the journal keeps the last {limit} bytes); read from {first}")]
    Dropped { first: u64, limit: u64 },
    #[error("offset {offset} is past the end of the output ({end} bytes so far)")]
    Beyond { offset: u64, end: u64 },
    #[error("reading the journal failed: {0}")]
    Io(#[from] io::Error),
}

#[derive(Debug)]
struct Segment {
    start: u64,
    len: u64,
}

#[derive(Debug)]
struct State {
    segments: VecDeque<Segment>,
    /// The open last segment, appended to.
    current: Option<File>,
    span: Span,
}

/// One stream's journal.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    limit: u64,
    state: Mutex<State>,
    /// The span, for followers waiting on new bytes or the end.
    span: watch::Sender<Span>,
}

fn segment_name(start: u64) -> String {
    format!("{start:020}")
}

fn open_nofollow(path: &Path, append: bool) -> io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    if append {
        o.append(true).create(true);
    } else {
        o.read(true);
    }
    o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC).mode(0o600).open(path)
}

impl Journal {
    /// A new, empty journal in `dir` (created; it must not hold segments already). `limit` is the most
    /// bytes kept; segments are `segment_bytes` long (the unit in which old output is dropped).
    pub fn create(dir: &Path, segment_bytes: u64, limit: u64) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        Ok(Journal::with_state(dir, segment_bytes, limit, VecDeque::new(), Span::default()))
    }

    /// Reopens a journal a previous agent left in `dir`, finished (its process is gone): the segments
    /// found, in order, with their lengths as they are on disk. A gap between segments (files removed by
    /// hand) keeps only what follows the last gap.
    pub fn reopen(dir: &Path, segment_bytes: u64, limit: u64) -> io::Result<Journal> {
        let mut found: Vec<Segment> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let Some(start) = entry.file_name().to_str().filter(|n| n.len() == 20).and_then(|n| n.parse().ok()) else {
                continue;
            };
            let meta = std::fs::symlink_metadata(entry.path())?;
            if meta.file_type().is_file() {
                found.push(Segment { start, len: meta.len() });
            }
        }
        found.sort_by_key(|s| s.start);
        let mut segments: VecDeque<Segment> = VecDeque::new();
        for s in found {
            if segments.back().is_some_and(|last| last.start + last.len != s.start) {
                segments.clear();
            }
            segments.push_back(s);
        }
        let first = segments.front().map_or(0, |s| s.start);
        let end = segments.back().map_or(0, |s| s.start + s.len);
        Ok(Journal::with_state(dir, segment_bytes, limit, segments, Span { first, end, finished: true }))
    }

    fn with_state(dir: &Path, segment_bytes: u64, limit: u64, segments: VecDeque<Segment>, span: Span) -> Journal {
        let (tx, _) = watch::channel(span);
        Journal {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            limit: limit.max(segment_bytes),
            state: Mutex::new(State { segments, current: None, span }),
            span: tx,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a panic mid-append; the span is still consistent with the files.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most bytes kept.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// What is kept now.
    pub fn span(&self) -> Span {
        *self.span.borrow()
    }

    /// Watches the span (followers wait on it for new bytes and for the end).
    pub fn subscribe(&self) -> watch::Receiver<Span> {
        self.span.subscribe()
    }

    /// Appends `data`, rolling over to a new segment at the segment size and dropping the oldest
    /// segments past the limit.
    pub fn append(&self, mut data: &[u8]) -> io::Result<()> {
        let mut st = self.lock();
        while !data.is_empty() {
            let room = match st.segments.back() {
                Some(s) if s.len < self.segment_bytes && st.current.is_some() => self.segment_bytes - s.len,
                _ => {
                    let start = st.span.end;
                    let file = open_nofollow(&self.dir.join(segment_name(start)), true)?;
                    st.current = Some(file);
                    st.segments.push_back(Segment { start, len: 0 });
                    self.segment_bytes
                }
            };
            let n = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
            let file = st.current.as_mut().ok_or_else(|| io::Error::other("no open segment"))?;
            file.write_all(&data[..n])?;
            if let Some(s) = st.segments.back_mut() {
                s.len += n as u64;
            }
            st.span.end += n as u64;
            data = &data[n..];
            self.drop_oldest(&mut st);
        }
        let span = st.span;
        drop(st);
        self.span.send_replace(span);
        Ok(())
    }

    fn drop_oldest(&self, st: &mut State) {
        while st.span.end - st.span.first > self.limit && st.segments.len() > 1 {
            if let Some(old) = st.segments.pop_front() {
                if let Err(e) = std::fs::remove_file(self.dir.join(segment_name(old.start))) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove an old journal segment");
                }
                st.span.first = old.start + old.len;
            }
        }
    }

    /// Marks the journal finished: followers stop once they have read to the end.
    pub fn finish(&self) {
        let mut st = self.lock();
        st.current = None;
        st.span.finished = true;
        let span = st.span;
        drop(st);
        self.span.send_replace(span);
    }

    /// Up to `max` bytes from `offset` (fewer at a segment's end; none at the end of what was written).
    pub fn read_at(&self, offset: u64, max: usize) -> Result<Vec<u8>, ReadError> {
        let (start, len) = {
            let st = self.lock();
            if offset < st.span.first {
                return Err(ReadError::Dropped { first: st.span.first, limit: self.limit });
            }
            if offset > st.span.end {
                return Err(ReadError::Beyond { offset, end: st.span.end });
            }
            match st.segments.iter().find(|s| offset < s.start + s.len) {
                Some(s) => (s.start, s.len),
                None => return Ok(Vec::new()),
            }
        };
        let file = match open_nofollow(&self.dir.join(segment_name(start)), false) {
            Ok(f) => f,
            // Dropped between the look-up and the open.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let first = self.span().first;
                return Err(ReadError::Dropped { first, limit: self.limit });
            }
            Err(e) => return Err(e.into()),
        };
        let want = usize::try_from(start + len - offset).unwrap_or(usize::MAX).min(max);
        let mut buf = vec![0u8; want];
        let n = file.read_at(&mut buf, offset - start)?;
        buf.truncate(n);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{Journal, ReadError};

    fn read_all(j: &Journal, mut from: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let b = j.read_at(from, 7).unwrap();
            if b.is_empty() {
                return out;
            }
            from += b.len() as u64;
            out.extend(b);
        }
    }

    #[test]
    fn appends_roll_over_segments_and_read_back_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), 10, 1000).unwrap();
        let data: Vec<u8> = (0..=255u8).collect();
        for chunk in data.chunks(33) {
            j.append(chunk).unwrap();
        }
        assert_eq!(j.span().end, 256);
        assert_eq!(read_all(&j, 0), data);
        assert_eq!(read_all(&j, 95), data[95..]);
        assert!(matches!(j.read_at(257, 1), Err(ReadError::Beyond { end: 256, .. })));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 26);
    }

    #[test]
    fn the_oldest_segments_go_past_the_limit_and_reading_them_says_where_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), 10, 30).unwrap();
        let data: Vec<u8> = (0..100u8).collect();
        j.append(&data).unwrap();
        let span = j.span();
        assert_eq!((span.first, span.end), (70, 100));
        match j.read_at(0, 10) {
            Err(ReadError::Dropped { first: 70, limit: 30 }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(read_all(&j, 70), data[70..]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }

    #[test]
    fn a_reopened_journal_keeps_its_offsets_and_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..95u8).collect();
        {
            let j = Journal::create(dir.path(), 10, 40).unwrap();
            j.append(&data).unwrap();
        }
        std::fs::write(dir.path().join("not-a-segment"), b"x").unwrap();
        let j = Journal::reopen(dir.path(), 10, 40).unwrap();
        let span = j.span();
        assert_eq!((span.first, span.end, span.finished), (60, 95, true));
        assert_eq!(read_all(&j, 60), data[60..]);
    }

    #[test]
    fn a_segment_replaced_by_a_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), 10, 100).unwrap();
        j.append(b"0123456789abc").unwrap();
        let seg = dir.path().join(super::segment_name(0));
        std::fs::remove_file(&seg).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &seg).unwrap();
        assert!(matches!(j.read_at(0, 10), Err(ReadError::Io(_))));
        assert_eq!(j.read_at(10, 10).unwrap(), b"abc");
    }
}
