//! Resumable SSE streams of the Streamable HTTP front-end's sessions (MCP's "resumability and
//! redelivery"; SEP-1699's priming event and `retry:`). Every event on a session's stream has an id
//! `S-N`: stream S of the session, event N counted from 1 (0 is the priming event that opens the stream
//! for clients of spec 2025-11-25 or later, with the reconnection delay in `retry:`). A stream keeps its
//! recent events and outlives its client's connection by [`RETAIN`], so a response is never lost to a
//! dropped connection: the client sends GET with `Last-Event-ID: S-N` and gets the events after N, then
//! the live ones, with no gap and no duplicate. When the events after N are no longer kept (the stream
//! expired, or its client read so slowly that [`KEEP_EVENTS`]/[`KEEP_BYTES`] overflowed, which also
//! ends that client's connection), the resume is refused saying so: never answered with a gap.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::sync::lock;

/// How long a stream waits for its client to come back after the connection dropped.
pub const RETAIN: Duration = Duration::from_secs(60);
/// The reconnection delay clients are told (`retry:`, milliseconds).
pub const RETRY_MS: u32 = 1000;
/// Events a stream keeps for a resume.
const KEEP_EVENTS: usize = 1024;
/// Bytes of events a stream keeps for a resume (the newest event is always kept).
const KEEP_BYTES: usize = 16 << 20;
/// Encoded events queued to a client's connection.
const CLIENT_BUFFER: usize = 64;

/// A client's connection: the encoded events its HTTP body sends.
pub type Client = mpsc::Receiver<Bytes>;

/// A request to resume a stream after event `after`, answered with the client's events or why not.
struct Resume {
    after: u64,
    answer: oneshot::Sender<Result<Client, String>>,
}

/// The resumable streams of one session.
#[derive(Default)]
pub struct Streams {
    next: std::sync::atomic::AtomicU64,
    live: Arc<Mutex<HashMap<u64, mpsc::Sender<Resume>>>>,
}

impl Streams {
    /// Opens a stream carrying what the router sends into `from_router`; returns its first client's
    /// events. `priming`: the client understands SEP-1699's priming event.
    pub fn open(&self, from_router: mpsc::Receiver<Vec<u8>>, priming: bool) -> Client {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let (resumes_tx, resumes) = mpsc::channel(4);
        lock(&self.live).insert(id, resumes_tx);
        let (client_tx, client) = mpsc::channel(CLIENT_BUFFER);
        let mut relay = Relay::new(id, priming);
        relay.client = Some(client_tx);
        let live = self.live.clone();
        tokio::spawn(async move {
            relay.run(from_router, resumes).await;
            lock(&live).remove(&id);
        });
        client
    }

    /// Resumes the stream a `Last-Event-ID` names: the events after it, then the live ones.
    pub async fn resume(&self, last_event_id: &str) -> Result<Client, String> {
        let Some((stream, after)) = parse_id(last_event_id) else {
            return Err(format!("Last-Event-ID `{last_event_id}` is not an event id berthd gave (`STREAM-EVENT`)"));
        };
        let gone = || format!("stream {stream} of this session has ended or expired: it cannot be resumed");
        let Some(relay) = lock(&self.live).get(&stream).cloned() else { return Err(gone()) };
        let (answer, rx) = oneshot::channel();
        relay.send(Resume { after, answer }).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// `S-N` → (S, N).
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (s, n) = id.trim().split_once('-')?;
    Some((s.parse().ok()?, n.parse().ok()?))
}

/// One SSE event carrying one message (MCP messages hold no raw newline, so one `data:` line).
pub fn event(id: Option<&str>, m: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(m.len() + 48);
    if let Some(id) = id {
        b.extend_from_slice(b"id: ");
        b.extend_from_slice(id.as_bytes());
        b.push(b'\n');
    }
    b.extend_from_slice(b"event: message\ndata: ");
    b.extend_from_slice(m);
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

/// The task that owns one stream: numbers and keeps its events, feeds its current client.
struct Relay {
    stream: u64,
    /// Kept events, oldest first: (N, encoded event).
    events: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// N of the next event.
    next: u64,
    /// N of the next event to hand to the current client.
    cursor: u64,
    client: Option<mpsc::Sender<Bytes>>,
}

/// What the current client gets next.
enum Next {
    Event(Bytes),
    Nothing,
    /// What it needs is no longer kept: its connection must end.
    Gap,
}

impl Relay {
    fn new(stream: u64, priming: bool) -> Relay {
        let mut r = Relay { stream, events: VecDeque::new(), bytes: 0, next: 1, cursor: 1, client: None };
        if priming {
            r.cursor = 0;
            r.keep(0, format!("id: {stream}-0\nretry: {RETRY_MS}\ndata: \n\n").into());
        }
        r
    }

    fn keep(&mut self, n: u64, frame: Bytes) {
        self.bytes += frame.len();
        self.events.push_back((n, frame));
        while self.events.len() > KEEP_EVENTS || (self.bytes > KEEP_BYTES && self.events.len() > 1) {
            if let Some((_, f)) = self.events.pop_front() {
                self.bytes -= f.len();
            }
        }
    }

    fn push(&mut self, m: &[u8]) {
        let n = self.next;
        self.next += 1;
        self.keep(n, event(Some(&format!("{}-{n}", self.stream)), m));
    }

    fn oldest(&self) -> u64 {
        self.events.front().map_or(self.next, |e| e.0)
    }

    fn pending(&self) -> Next {
        if self.client.is_none() || self.cursor >= self.next {
            return Next::Nothing;
        }
        let Some(i) = self.cursor.checked_sub(self.oldest()).and_then(|i| usize::try_from(i).ok()) else {
            return Next::Gap;
        };
        self.events.get(i).map_or(Next::Nothing, |(_, f)| Next::Event(f.clone()))
    }

    fn resume(&mut self, r: Resume) {
        let oldest = self.oldest();
        let refused = if r.after >= self.next {
            Some(format!("event {}-{} was never sent on this stream", self.stream, r.after))
        } else if r.after + 1 < oldest {
            Some(format!(
                "the events of stream {} after {} are no longer kept (the oldest kept is {oldest}): the rest of this \
                 stream cannot be replayed without a gap",
                self.stream, r.after
            ))
        } else {
            None
        };
        if let Some(why) = refused {
            let _ = r.answer.send(Err(why));
            return;
        }
        let (tx, rx) = mpsc::channel(CLIENT_BUFFER);
        // A new connection replaces an older one still open (its client gave up on it).
        self.client = Some(tx);
        self.cursor = r.after + 1;
        let _ = r.answer.send(Ok(rx));
    }

    async fn run(mut self, mut from_router: mpsc::Receiver<Vec<u8>>, mut resumes: mpsc::Receiver<Resume>) {
        let mut router_done = false;
        let mut idle_since = Instant::now();
        loop {
            let next = match self.pending() {
                Next::Gap => {
                    tracing::warn!(
                        stream = self.stream,
                        "an MCP SSE client fell behind what is kept; its connection ends"
                    );
                    self.client = None;
                    idle_since = Instant::now();
                    None
                }
                Next::Event(f) => Some(f),
                Next::Nothing => None,
            };
            if router_done && next.is_none() && self.client.take().is_some() {
                // All handed over: the body ends. Kept a while in case the tail never reached the client.
                idle_since = Instant::now();
            }
            let client = self.client.clone();
            tokio::select! {
                m = from_router.recv(), if !router_done => match m {
                    Some(m) => self.push(&m),
                    None => router_done = true,
                },
                r = resumes.recv() => match r {
                    Some(r) => self.resume(r),
                    None => return,
                },
                permit = async { client.as_ref()?.reserve().await.ok() }, if next.is_some() => match (permit, next) {
                    (Some(p), Some(frame)) => {
                        p.send(frame);
                        self.cursor += 1;
                    }
                    _ => {
                        self.client = None;
                        idle_since = Instant::now();
                    }
                },
                _ = async { if let Some(c) = &client { c.closed().await } }, if next.is_none() && client.is_some() => {
                    self.client = None;
                    idle_since = Instant::now();
                },
                _ = tokio::time::sleep_until(idle_since + RETAIN), if self.client.is_none() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn read(c: &mut Client) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(5), c.recv())
            .await
            .unwrap()
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    fn id_of(event: &str) -> &str {
        event.strip_prefix("id: ").and_then(|r| r.split('\n').next()).unwrap()
    }

    #[tokio::test]
    async fn a_dropped_client_resumes_after_its_last_event_with_no_gap_and_no_duplicate() {
        let streams = Streams::default();
        let (tx, rx) = mpsc::channel(16);
        let mut c = streams.open(rx, true);
        let priming = read(&mut c).await.unwrap();
        assert_eq!(priming, format!("id: 1-0\nretry: {RETRY_MS}\ndata: \n\n"));
        tx.send(b"{\"n\":1}".to_vec()).await.unwrap();
        let first = read(&mut c).await.unwrap();
        assert_eq!(first, "id: 1-1\nevent: message\ndata: {\"n\":1}\n\n");
        drop(c);
        for n in 2..=4 {
            tx.send(format!("{{\"n\":{n}}}").into_bytes()).await.unwrap();
        }
        drop(tx); // the response went out: the stream is complete
        let mut c = streams.resume(id_of(&first)).await.unwrap();
        let mut rest = Vec::new();
        while let Some(e) = read(&mut c).await {
            rest.push(e);
        }
        let ids: Vec<&str> = rest.iter().map(|e| id_of(e)).collect();
        assert_eq!(ids, ["1-2", "1-3", "1-4"]);
        // From the priming event: everything again, in order.
        let mut c = streams.resume("1-0").await.unwrap();
        assert!(read(&mut c).await.unwrap().contains("{\"n\":1}"));
    }

    #[tokio::test]
    async fn resumes_that_would_leave_a_gap_or_name_nothing_are_refused() {
        let streams = Streams::default();
        let (tx, rx) = mpsc::channel(KEEP_EVENTS + 64);
        drop(streams.open(rx, false));
        for n in 0..KEEP_EVENTS + 10 {
            tx.send(format!("{{\"n\":{n}}}").into_bytes()).await.unwrap();
        }
        // Make sure the relay has read them all.
        let last = KEEP_EVENTS as u64 + 10;
        let t = std::time::Instant::now();
        while streams.resume(&format!("1-{last}")).await.is_err() {
            assert!(t.elapsed() < Duration::from_secs(5));
            tokio::task::yield_now().await;
        }
        let e = streams.resume("1-1").await.err().unwrap();
        assert!(e.contains("no longer kept") && e.contains("without a gap"), "{e}");
        let e = streams.resume(&format!("1-{}", last + 1)).await.err().unwrap();
        assert!(e.contains("never sent"), "{e}");
        assert!(streams.resume("2-0").await.err().unwrap().contains("ended or expired"));
        assert!(streams.resume("garbage").await.err().unwrap().contains("not an event id"));
        let mut c = streams.resume(&format!("1-{}", last - 1)).await.unwrap();
        assert!(read(&mut c).await.unwrap().starts_with(&format!("id: 1-{last}\n")));
    }

    #[tokio::test]
    async fn a_client_that_reads_too_slowly_is_cut_off_rather_than_given_a_gap() {
        let mut r = Relay::new(1, false);
        let (tx, _slow) = mpsc::channel(1);
        r.client = Some(tx);
        for n in 0..KEEP_EVENTS + 5 {
            r.push(format!("{n}").as_bytes());
        }
        assert!(matches!(r.pending(), Next::Gap));
    }
}
