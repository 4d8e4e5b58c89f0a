//! The writer: stores queued events in batches, in the order they were announced. While the database
//! cannot be reached (or a write takes longer than [`WRITE_DEADLINE`]) events go to the spill file, and
//! every event after them too, so the order holds; the spill is drained first, tried again each
//! [`RETRY`] and for at most [`DRAIN_DEADLINE`] at a time, so queued events keep reaching the spill (and
//! a flush at shutdown is answered) while the database hangs. An event the database refuses as data
//! (never the case for what `announce` lets through; counted and logged) is dropped alone, so one bad
//! event cannot hold up the rest. Also prunes events older than the journal keeps.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use super::spill::Spill;
use super::{BotEvent, Msg};
use crate::store::Store;

/// Events stored per transaction.
const BATCH: usize = 256;

/// How long one batch may take before its events are spilled instead.
const WRITE_DEADLINE: Duration = Duration::from_secs(3);

/// How long one attempt to drain the spill may take in all.
const DRAIN_DEADLINE: Duration = Duration::from_secs(3);

/// How often a spill is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub(super) async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Msg>,
    mut spill: Spill,
    wake: Arc<Notify>,
    mut reader_ready: watch::Receiver<bool>,
    keep: Duration,
) {
    // Nothing is stored before the reader knows where the table ends, or it would never broadcast it.
    if reader_ready.wait_for(|r| *r).await.is_err() {
        return;
    }
    let mut last_prune = Instant::now();
    let mut next_drain = Instant::now();
    loop {
        if spill.pending() && Instant::now() >= next_drain && !drain(&store, &mut spill, &wake).await {
            next_drain = Instant::now() + RETRY;
        }
        let first = if spill.pending() {
            tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(next_drain) => continue,
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
            last_prune = Instant::now();
            prune(&store, keep).await;
        }
    }
}

/// Stores `events`, or spills them when the spill is not empty or the database fails.
async fn write(store: &Store, spill: &mut Spill, wake: &Notify, events: &[BotEvent]) {
    if !spill.pending() {
        match store_batch(store, events).await {
            Ok(()) => {
                wake.notify_one();
                return;
            }
            Err(why) => {
                tracing::warn!(events = events.len(), error = %why, "cannot store events; spilling them to disk")
            }
        }
    }
    if let Err(e) = spill.append(events) {
        crate::metrics::metrics().events_dropped.inc_by(events.len() as u64);
        tracing::error!(events = events.len(), error = %e, "events lost: the database and the spill file both failed");
    }
}

/// Stores a batch within [`WRITE_DEADLINE`]. A batch the database refuses as data is stored one event at a
/// time, dropping (and counting) each event it refuses.
async fn store_batch(store: &Store, events: &[BotEvent]) -> Result<(), String> {
    let err = match tokio::time::timeout(WRITE_DEADLINE, store.insert_events(events)).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) if e.is_refused_data() => e,
        Ok(Err(e)) => return Err(crate::error::chain(&e)),
        Err(_) => return Err(format!("no answer within {} s", WRITE_DEADLINE.as_secs())),
    };
    tracing::warn!(error = %crate::error::chain(&err), "the database refused a batch of events; storing them one by one");
    for e in events {
        match tokio::time::timeout(WRITE_DEADLINE, store.insert_events(std::slice::from_ref(e))).await {
            Ok(Ok(())) => {}
            Ok(Err(why)) if why.is_refused_data() => {
                crate::metrics::metrics().events_dropped.inc();
                tracing::error!(bot.name = %e.name, kind = %e.kind, error = %crate::error::chain(&why),
                    "event dropped: the database refuses it");
            }
            Ok(Err(why)) => return Err(crate::error::chain(&why)),
            Err(_) => return Err(format!("no answer within {} s", WRITE_DEADLINE.as_secs())),
        }
    }
    Ok(())
}

/// Stores the spilled events in order and removes the file; true once it is empty. On failure (or past
/// [`DRAIN_DEADLINE`]) they stay for the next try; what was stored already is not stored twice (events
/// are stored by id).
async fn drain(store: &Store, spill: &mut Spill, wake: &Notify) -> bool {
    let events = match spill.read() {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the event spill file; trying again");
            return false;
        }
    };
    let deadline = Instant::now() + DRAIN_DEADLINE;
    for chunk in events.chunks(BATCH) {
        if Instant::now() >= deadline {
            return false;
        }
        match store_batch(store, chunk).await {
            Ok(()) => wake.notify_one(),
            Err(why) => {
                tracing::debug!(error = %why, "spilled events wait for the database");
                return false;
            }
        }
    }
    match spill.clear() {
        Ok(()) => {
            tracing::info!(events = events.len(), "spilled events stored");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot remove the drained event spill file");
            false
        }
    }
}

async fn prune(store: &Store, keep: Duration) {
    let before = crate::time::now_ms() - keep.as_millis() as i64;
    match tokio::time::timeout(WRITE_DEADLINE * 10, store.prune_events(before)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(events = n, "old events pruned"),
        Ok(Err(e)) => tracing::warn!(error = %crate::error::chain(&e), "cannot prune old events"),
        Err(_) => tracing::warn!("pruning old events did not finish in 30 s"),
    }
}
