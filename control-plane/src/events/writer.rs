//! The writer: stores queued events in batches, in the order they were announced. While the database
//! cannot be reached (or a write takes longer than [`WRITE_DEADLINE`]) events go to the spill file, and
//! every event after them too, so the order holds; the spill is drained first, retried every second.
//! Also prunes events older than the journal keeps.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};

use super::spill::Spill;
use super::{BotEvent, Msg};
use crate::store::Store;

/// Events stored per transaction.
const BATCH: usize = 256;

/// How long one batch may take before its events are spilled instead.
const WRITE_DEADLINE: Duration = Duration::from_secs(3);

/// How often a spill is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub(super) async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Msg>,
    mut spill: Spill,
    wake: Arc<Notify>,
    reader_ready: oneshot::Receiver<()>,
    keep: Duration,
) {
    // Nothing is stored before the reader knows where the table ends, or it would never broadcast it.
    let _ = reader_ready.await;
    let mut last_prune = tokio::time::Instant::now();
    loop {
        if spill.pending() {
            drain(&store, &mut spill, &wake).await;
        }
        let first = if spill.pending() {
            tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep(RETRY) => continue,
            }
        } else {
            rx.recv().await
        };
        let Some(first) = first else { return };
        let mut events = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(m) = next {
            match m {
                Msg::Event(e) => events.push(e),
                Msg::Flush(f) => flushes.push(f),
            }
            next = if events.len() < BATCH { rx.try_recv().ok() } else { None };
        }
        if !events.is_empty() {
            write(&store, &mut spill, &wake, &events).await;
        }
        for f in flushes {
            let _ = f.send(());
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            prune(&store, keep).await;
        }
    }
}

/// Stores `events`, or spills them when the spill is not empty or the database fails.
async fn write(store: &Store, spill: &mut Spill, wake: &Notify, events: &[BotEvent]) {
    if !spill.pending() {
        match tokio::time::timeout(WRITE_DEADLINE, store.insert_events(events)).await {
            Ok(Ok(())) => {
                wake.notify_one();
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(events = events.len(), error = %crate::error::chain(&e), "cannot store events; spilling them to disk")
            }
            Err(_) => tracing::warn!(events = events.len(), "storing events timed out; spilling them to disk"),
        }
    }
    if let Err(e) = spill.append(events) {
        crate::metrics::metrics().events_dropped.inc_by(events.len() as u64);
        tracing::error!(events = events.len(), error = %e, "events lost: the database and the spill file both failed");
    }
}

/// Stores the spilled events in order and removes the file; on failure they stay for the next try.
async fn drain(store: &Store, spill: &mut Spill, wake: &Notify) {
    let events = match spill.read() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the event spill file; trying again");
            return;
        }
    };
    for chunk in events.chunks(BATCH) {
        match tokio::time::timeout(WRITE_DEADLINE, store.insert_events(chunk)).await {
            Ok(Ok(())) => wake.notify_one(),
            Ok(Err(e)) => {
                tracing::debug!(error = %crate::error::chain(&e), "spilled events wait for the database");
                return;
            }
            Err(_) => return,
        }
    }
    match spill.clear() {
        Ok(()) => tracing::info!(events = events.len(), "spilled events stored"),
        // Stored already: draining again stores nothing twice (events are stored by id).
        Err(e) => tracing::error!(error = %e, "cannot remove the drained event spill file"),
    }
}

async fn prune(store: &Store, keep: Duration) {
    let before = crate::time::now_ms() - keep.as_millis() as i64;
    match store.prune_events(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(events = n, "old events pruned"),
        Err(e) => tracing::warn!(error = %crate::error::chain(&e), "cannot prune old events"),
    }
}
