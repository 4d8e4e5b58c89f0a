//! Watching: every stored event after an id, then live ones, in id order with no gap and no duplicate.
//! The live subscription is taken before the table is read, so an event is either in what was read or
//! comes live (a copy in both is skipped by id); a watcher too slow for the live broadcast reads what it
//! missed from the table instead of losing it.

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{BotEvent, Journal};
use crate::error::{Error, Result};

/// A watcher's events (an error ends it; resume from the last id received).
pub type Watch = ReceiverStream<Result<BotEvent>>;

/// Events read per query when catching up.
const PAGE: u32 = 500;

impl Journal {
    /// The events `wanted` lets through: with `after`, every kept event with a greater id first (0: every
    /// kept event); then live ones. OUT_OF_RANGE when events after `after` are no longer kept.
    pub async fn watch(
        &self,
        after: Option<i64>,
        wanted: impl Fn(&BotEvent) -> bool + Send + Sync + 'static,
    ) -> Result<Watch> {
        Ok(self.watch_from(after, wanted).await?.1)
    }

    /// [`Journal::watch`], and the id it starts after: `after`, or the newest when it is `None` (what a
    /// watcher dropped before its first event resumes from).
    pub async fn watch_from(
        &self,
        after: Option<i64>,
        wanted: impl Fn(&BotEvent) -> bool + Send + Sync + 'static,
    ) -> Result<(i64, Watch)> {
        self.reader_started().await?;
        let mut live = self.subscribe();
        let store = self.inner.store.clone();
        let (first, newest) = super::bounded(store.event_bounds()).await?;
        let from = match after {
            None => newest,
            Some(a) if a < 0 => return Err(Error::InvalidArgument(format!("after_id {a} is negative"))),
            Some(a) if a > newest => {
                return Err(Error::OutOfRange(format!(
                    "after_id {a} is past the newest event ({newest}): resume from an id WatchEvents gave"
                )));
            }
            Some(a) if a > 0 && a + 1 < first => {
                return Err(Error::OutOfRange(format!(
                    "the events after {a} up to {} are no longer kept (old events are pruned); watch again from \
                     after_id 0 for every kept event",
                    first - 1
                )));
            }
            Some(a) => a,
        };
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut last = from;
            let send = |e: BotEvent, last: &mut i64| {
                let keep = e.seq > *last && wanted(&e);
                *last = (*last).max(e.seq);
                keep.then_some(e)
            };
            if after.is_some() && !catch_up(&store, &tx, &mut last, &send).await {
                return;
            }
            loop {
                // A watcher whose client has gone ends at once, not at the next event it would send.
                let got = tokio::select! {
                    got = live.recv() => got,
                    _ = tx.closed() => return,
                };
                match got {
                    Ok(e) => {
                        if let Some(e) = send(e, &mut last)
                            && tx.send(Ok(e)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        if !catch_up(&store, &tx, &mut last, &send).await {
                            return;
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok((from, ReceiverStream::new(rx)))
    }

    /// Waits (as long as one read of the table may take) until the reader knows where the table ends, so
    /// that it broadcasts every event after the end a watcher reads next.
    async fn reader_started(&self) -> Result<()> {
        let mut ready = self.inner.reader_ready.clone();
        match tokio::time::timeout(super::QUERY_DEADLINE, ready.wait_for(|r| *r)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Unavailable("the event reader has stopped".into())),
            Err(_) => Err(Error::Unavailable(format!(
                "the database did not answer a read of the events within {} s",
                super::QUERY_DEADLINE.as_secs()
            ))),
        }
    }
}

/// Sends what the table holds after `last`; false once the watcher is gone or the table unreadable (the
/// watcher is told, and resumes).
async fn catch_up(
    store: &crate::store::Store,
    tx: &mpsc::Sender<Result<BotEvent>>,
    last: &mut i64,
    send: &impl Fn(BotEvent, &mut i64) -> Option<BotEvent>,
) -> bool {
    loop {
        let page = match super::bounded(store.events_after(*last, PAGE)).await {
            Ok(p) => p,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return false;
            }
        };
        // Ids have no gap but the pruned start: one here means events were pruned under this watcher.
        if let Some(e) = page.first()
            && *last > 0
            && e.seq > *last + 1
        {
            let m = format!(
                "the events after {} up to {} are no longer kept; watch again from after_id 0",
                last,
                e.seq - 1
            );
            let _ = tx.send(Err(Error::OutOfRange(m))).await;
            return false;
        }
        let full = page.len() == PAGE as usize;
        for e in page {
            if let Some(e) = send(e, last)
                && tx.send(Ok(e)).await.is_err()
            {
                return false;
            }
        }
        if !full {
            return true;
        }
    }
}
