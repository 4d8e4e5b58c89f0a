//! The reader: follows the event table from where it ended when berthd started and broadcasts every
//! stored event once, in id order, whichever node stored it. Woken by this node's writer, by another
//! node's NOTIFY (PostgreSQL), and every [`POLL`] in case a notification was lost.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};

use super::BotEvent;
use crate::store::{EventListener, Store};

/// How often the table is read without a wake-up.
const POLL: Duration = Duration::from_secs(1);

/// How long after a failed LISTEN it is tried again.
const RELISTEN: Duration = Duration::from_secs(5);

/// Events read per query.
const PAGE: u32 = 500;

pub(super) async fn run(
    store: Store,
    live: broadcast::Sender<BotEvent>,
    wake: Arc<Notify>,
    ready: watch::Sender<bool>,
) {
    let mut last = loop {
        match super::bounded(store.event_bounds()).await {
            Ok((_, last)) => break last,
            Err(e) => {
                tracing::warn!(error = %e, "events: cannot read where the table ends; trying again");
                tokio::time::sleep(POLL).await;
            }
        }
    };
    ready.send_replace(true);
    let mut listener: Option<EventListener> = None;
    let mut listen_at = tokio::time::Instant::now();
    // The writer holds the other handle on `wake`: once it has ended (the journal was dropped), so does this.
    while Arc::strong_count(&wake) > 1 {
        if listener.is_none() && tokio::time::Instant::now() >= listen_at {
            listen_at = tokio::time::Instant::now() + RELISTEN;
            match super::bounded(store.event_listener()).await {
                Ok(l) => listener = l,
                Err(e) => tracing::warn!(error = %e, "events: cannot LISTEN; polling meanwhile"),
            }
        }
        last = forward(&store, &live, last).await;
        let notified = async {
            match &mut listener {
                Some(l) => l.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = wake.notified() => {}
            r = notified => if let Err(e) = r {
                tracing::debug!(error = %crate::error::chain(&e), "events: the LISTEN connection failed; it is made again");
                listener = None;
            },
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Broadcasts every event stored after `last`; returns the new position.
async fn forward(store: &Store, live: &broadcast::Sender<BotEvent>, mut last: i64) -> i64 {
    loop {
        let page = match super::bounded(store.events_after(last, PAGE)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "events: cannot read new events");
                return last;
            }
        };
        let full = page.len() == PAGE as usize;
        for e in page {
            last = e.seq;
            // No receiver is not an error: nothing watches.
            let _ = live.send(e);
        }
        if !full {
            return last;
        }
    }
}
