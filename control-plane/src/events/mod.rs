//! Bot events, cluster-wide and off the request path. Announcing an event only queues it: a writer task
//! stores queued events in the database (`writer.rs`), or, while the database cannot be reached, appends
//! them to a durable spill file drained in order once it can (`spill.rs`). The database's event table is
//! the one order every node sees: a reader task on each node follows it (woken by its own writer, by
//! PostgreSQL NOTIFY from other nodes, and by a poll) and broadcasts each stored event once, in order
//! (`reader.rs`). Watchers resume from any kept id: what is stored after it, then live events, with no
//! gap and no duplicate (`watch.rs`).

mod reader;
mod spill;
mod watch;
mod writer;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, mpsc, oneshot};

use crate::store::Store;
pub use crate::store::records::BotEvent;
use crate::store::records::BotState;
pub use watch::Watch;

/// Events waiting for the writer; past this an event is dropped, logged and counted (the writer is
/// stuck on a spill file it cannot write).
const QUEUE: usize = 65_536;

/// The longest event message kept, in bytes.
const MESSAGE_MAX: usize = 4096;

/// How long one read of the event table may take.
const QUERY_DEADLINE: Duration = Duration::from_secs(10);

/// `message` safe to store and show (see [`crate::text::shown`]), at most [`MESSAGE_MAX`] bytes.
fn clean(message: &str) -> String {
    crate::text::shown(message, MESSAGE_MAX)
}

/// A read of the event table, bounded by [`QUERY_DEADLINE`].
async fn bounded<T>(
    read: impl std::future::Future<Output = Result<T, crate::store::StoreError>>,
) -> crate::error::Result<T> {
    match tokio::time::timeout(QUERY_DEADLINE, read).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(crate::error::Error::Unavailable(format!(
            "the database did not answer a read of the events within {} s",
            QUERY_DEADLINE.as_secs()
        ))),
    }
}

/// Stored events kept for slow watchers before they must catch up from the database.
const LIVE: usize = 4096;

/// Where events go and come from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file events wait in while the database cannot be reached.
    pub spill: PathBuf,
    /// This node's name, recorded with its events; empty on a single node.
    pub node: String,
    /// How long stored events are kept.
    pub keep: Duration,
}

/// A request to the writer.
enum Msg {
    Event(BotEvent),
    /// Answered once everything queued before it is stored or spilled.
    Flush(oneshot::Sender<()>),
}

/// This node's event journal: announce, subscribe, watch.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    queue: mpsc::Sender<Msg>,
    live: broadcast::Sender<BotEvent>,
    store: Store,
    node: String,
    /// True once the reader knows where the table ends: a watcher that read the table's end before
    /// then could miss the events stored in between, which the reader would never broadcast.
    reader_ready: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Event(e) => write!(f, "Event({} {})", e.name, e.kind),
            Msg::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Journal {
    /// Starts the writer and the reader (call within a Tokio runtime). They run until every `Journal`
    /// clone is dropped.
    pub fn start(store: Store, settings: Settings) -> Journal {
        let (queue, rx) = mpsc::channel(QUEUE);
        let (live, _) = broadcast::channel(LIVE);
        let wake = Arc::new(Notify::new());
        let (ready_tx, reader_ready) = tokio::sync::watch::channel(false);
        tokio::spawn(reader::run(store.clone(), live.clone(), wake.clone(), ready_tx));
        let spill = spill::Spill::new(settings.spill);
        tokio::spawn(writer::run(store.clone(), rx, spill, wake, reader_ready.clone(), settings.keep));
        Journal { inner: Arc::new(Inner { queue, live, store, node: settings.node, reader_ready }) }
    }

    /// Queues an event; never waits. The message may carry text a bot chose (an agent's last words): its
    /// control characters are escaped (NUL, which PostgreSQL cannot store, and terminal escapes) and it
    /// is cut to [`MESSAGE_MAX`] bytes.
    pub fn announce(&self, name: &str, state: BotState, kind: &str, message: &str) {
        let message = clean(message);
        let message = message.as_str();
        let ev = BotEvent {
            id: uuid::Uuid::new_v4().to_string(),
            seq: 0,
            name: name.to_string(),
            kind: kind.to_string(),
            state,
            message: message.to_string(),
            at_ms: crate::time::now_ms(),
            node: self.inner.node.clone(),
        };
        tracing::info!(bot.name = name, state = state.as_str(), kind, message, "bot event");
        if let Err(e) = self.inner.queue.try_send(Msg::Event(ev)) {
            crate::metrics::metrics().events_dropped.inc();
            tracing::error!(bot.name = name, kind, error = %e, "event dropped: the event writer is stuck");
        }
    }

    /// Every stored event from now on, in order (a receiver that lags gets `Lagged` and should read the
    /// database, as [`Journal::watch`] does).
    pub fn subscribe(&self) -> broadcast::Receiver<BotEvent> {
        self.inner.live.subscribe()
    }

    /// Waits until everything announced so far is stored or spilled, at most `deadline`.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        let done = async {
            self.inner.queue.send(Msg::Flush(tx)).await.ok()?;
            rx.await.ok()
        };
        matches!(tokio::time::timeout(deadline, done).await, Ok(Some(())))
    }
}
