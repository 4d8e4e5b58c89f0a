//! Copying a child's output into a session's response channel. A pump reads until EOF, the client is
//! gone, or it is told to stop (the process exited but something, typically a background grandchild,
//! still holds the pipe open). Data already in the pipe when the stop comes is still delivered.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Read size; also the largest output frame.
pub const CHUNK_BYTES: usize = 64 << 10;
/// After a stop, at most this much more is read (a grandchild flooding the pipe cannot keep us here).
const AFTER_STOP_BYTES: usize = 1 << 20;
/// After a stop, a read that waits this long means nothing more is buffered.
const AFTER_STOP_WAIT: Duration = Duration::from_millis(5);

/// Runs reads until told to stop, then only while data is immediately available.
#[derive(Debug)]
pub struct StopGuard {
    stop: watch::Receiver<bool>,
    stopped: bool,
    after_stop: usize,
}

impl StopGuard {
    pub fn new(stop: watch::Receiver<bool>) -> Self {
        StopGuard { stop, stopped: false, after_stop: 0 }
    }

    /// Awaits `fut` (a read); `None` means stop reading now.
    pub async fn guarded<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(fut);
        self.stopped = self.stopped || *self.stop.borrow();
        if !self.stopped {
            tokio::select! {
                biased;
                r = &mut fut => return Some(r),
                _ = self.stop.changed() => self.stopped = true,
            }
        }
        tokio::time::timeout(AFTER_STOP_WAIT, fut).await.ok()
    }

    /// Accounts for `n` bytes read; false once too much arrived after the stop.
    pub fn admit(&mut self, n: usize) -> bool {
        if self.stopped {
            self.after_stop += n;
        }
        self.after_stop <= AFTER_STOP_BYTES
    }
}

/// Copies `reader` into `tx`, wrapping each chunk with `wrap`.
pub async fn pump<R, T, E>(
    mut reader: R,
    tx: mpsc::Sender<Result<T, E>>,
    stop: watch::Receiver<bool>,
    wrap: fn(Vec<u8>) -> T,
) where
    R: AsyncRead + Unpin,
{
    let mut guard = StopGuard::new(stop);
    loop {
        // Capacity only: the read fills it without the buffer being zeroed first, and pages a short read
        // never reaches are never touched (most commands print little or nothing).
        let mut buf = Vec::with_capacity(CHUNK_BYTES);
        let n = match guard.guarded(reader.read_buf(&mut buf)).await {
            Some(Ok(n)) if n > 0 => n,
            _ => return,
        };
        if !guard.admit(n) {
            return;
        }
        if tx.send(Ok(wrap(buf))).await.is_err() {
            return;
        }
    }
}

/// Waits for the output pumps: up to `grace` for them to reach EOF on their own, then tells them
/// to stop (delivering only what is already buffered) and waits for that.
pub async fn finish_pumps(mut pending: Vec<JoinHandle<()>>, stop: &watch::Sender<bool>, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    while let Some(p) = pending.last_mut() {
        match tokio::time::timeout_at(deadline, p).await {
            Ok(_) => {
                pending.pop();
            }
            Err(_) => break,
        }
    }
    let _ = stop.send(true);
    for p in pending {
        let _ = p.await;
    }
}

/// Sleeps until `deadline`, or forever without one (for an optional arm of a `select!`).
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
