//! A caller's request stream passed on to another call (a bot's agent, or the node that owns the bot)
//! without changing what it means. It ends where the caller's ends. When it fails instead (a message too
//! large to decode, a reset), it must not look like an end — the agent or owner would take what came so
//! far for the whole request and, say, keep half an upload — so it stops yielding and [`Broken`] fires;
//! the call it feeds is then dropped ([`guard`], [`until_broken`]), which the far side sees as its
//! caller gone.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;
use tokio_stream::Stream;
use tonic::{Status, Streaming};

/// A response stream, whichever side it comes from.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Fires with the caller's stream's failure.
pub struct Broken(Option<oneshot::Receiver<Status>>);

impl Broken {
    /// The failure, when there is one; pending forever when the stream ended well (or the failure was
    /// already taken). Safe to call again after it was dropped unfinished or finished.
    pub async fn failure(&mut self) -> Status {
        if let Some(rx) = self.0.as_mut() {
            let outcome = rx.await;
            self.0 = None;
            if let Ok(s) = outcome {
                return s;
            }
        }
        std::future::pending().await
    }
}

/// The caller's request stream, to pass on (see the module's note).
pub struct Upstream<S> {
    inner: S,
    broken: Option<oneshot::Sender<Status>>,
    failed: bool,
}

/// Wraps a caller's request stream.
pub fn upstream<S>(inner: S) -> (Upstream<S>, Broken) {
    let (tx, rx) = oneshot::channel();
    (Upstream { inner, broken: Some(tx), failed: false }, Broken(Some(rx)))
}

/// A call's request stream wrapped, its metadata kept.
pub fn split<T>(r: tonic::Request<Streaming<T>>) -> (tonic::Request<Upstream<Streaming<T>>>, Broken) {
    let (metadata, extensions, inner) = r.into_parts();
    let (up, broken) = upstream(inner);
    (tonic::Request::from_parts(metadata, extensions, up), broken)
}

/// Like [`split`], with `first` (a message already read to route the call) put back in front.
pub fn split_after<T: Send + 'static>(
    r: tonic::Request<Streaming<T>>,
    first: T,
) -> (tonic::Request<impl Stream<Item = T> + Send + 'static>, Broken) {
    let (r, broken) = split(r);
    (r.map(|up| tokio_stream::StreamExt::chain(tokio_stream::once(first), up)), broken)
}

impl<T, S: Stream<Item = Result<T, Status>> + Unpin> Stream for Upstream<S> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if self.failed {
            // Never an end: the call this feeds is being dropped.
            return Poll::Pending;
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(m))) => Poll::Ready(Some(m)),
            Poll::Ready(Some(Err(e))) => {
                self.failed = true;
                if let Some(tx) = self.broken.take() {
                    let _ = tx.send(Status::new(e.code(), format!("the request stream failed: {}", e.message())));
                }
                Poll::Pending
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Runs `call` fed by an [`Upstream`]; when that breaks, drops the call and fails with why.
pub async fn guard<R>(call: impl Future<Output = Result<R, Status>>, mut broken: Broken) -> Result<R, Status> {
    tokio::select! {
        r = call => r,
        s = broken.failure() => Err(s),
    }
}

/// Opens a call with a response stream fed by an [`Upstream`]; `broken` comes back for
/// [`until_broken`].
pub async fn guard_open<R>(
    call: impl Future<Output = Result<R, Status>>,
    mut broken: Broken,
) -> Result<(R, Broken), Status> {
    tokio::select! {
        r = call => Ok((r?, broken)),
        s = broken.failure() => Err(s),
    }
}

/// A response stream fed by a call on an [`Upstream`]: when that breaks, it yields the failure and ends,
/// dropping the call.
pub fn until_broken<A: Send + 'static>(inner: BoxStream<A>, broken: Broken) -> BoxStream<A> {
    let mut broken = broken;
    Box::pin(UntilBroken { inner: Some(inner), broken: Some(Box::pin(async move { broken.failure().await })) })
}

struct UntilBroken<A> {
    inner: Option<BoxStream<A>>,
    broken: Option<Pin<Box<dyn Future<Output = Status> + Send>>>,
}

impl<A> Stream for UntilBroken<A> {
    type Item = Result<A, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(b) = self.broken.as_mut()
            && let Poll::Ready(s) = b.as_mut().poll(cx)
        {
            self.broken = None;
            self.inner = None;
            return Poll::Ready(Some(Err(s)));
        }
        match self.inner.as_mut() {
            Some(inner) => inner.as_mut().poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn a_stream_that_fails_never_ends_and_the_call_it_feeds_is_dropped() {
        let (mut up, broken) = upstream(tokio_stream::iter([Ok(1), Err(Status::data_loss("cut")), Ok(2)]));
        let call = async move {
            let mut seen = Vec::new();
            while let Some(v) = up.next().await {
                seen.push(v);
            }
            Ok::<_, Status>(seen)
        };
        let e = guard(call, broken).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::DataLoss);
        assert!(e.message().contains("the request stream failed: cut"), "{e:?}");
    }

    #[tokio::test]
    async fn a_stream_that_ends_well_ends_and_the_call_answers() {
        let (up, broken) = upstream(tokio_stream::iter([Ok::<_, Status>(1), Ok(2)]));
        let sum = guard(async move { Ok(up.fold(0, |a, b| a + b).await) }, broken).await.unwrap();
        assert_eq!(sum, 3);
        let (up, broken) = upstream(tokio_stream::iter([Ok::<_, Status>(1)]));
        let responses: BoxStream<i32> = Box::pin(tokio_stream::iter([Ok(7), Ok(8)]));
        drop(up);
        let got: Vec<_> = until_broken(responses, broken).collect().await;
        assert_eq!(got.len(), 2, "a clean end does not cut the responses: {got:?}");
    }

    #[tokio::test]
    async fn a_request_stream_that_ended_before_the_call_opened_does_not_cut_its_responses() {
        let (up, broken) = upstream(tokio_stream::iter([Ok::<_, Status>(1)]));
        drop(up);
        let (responses, broken) =
            guard_open(async { Ok::<BoxStream<i32>, Status>(Box::pin(tokio_stream::iter([Ok(7)]))) }, broken)
                .await
                .unwrap();
        tokio::task::yield_now().await;
        let got: Vec<_> = until_broken(responses, broken).collect().await;
        assert_eq!(got.len(), 1, "{got:?}");
    }

    #[tokio::test]
    async fn responses_end_with_the_failure_when_the_request_stream_breaks() {
        let (mut up, broken) = upstream(tokio_stream::iter([Err::<i32, _>(Status::cancelled("gone"))]));
        let responses: BoxStream<i32> = Box::pin(tokio_stream::pending());
        let mut out = until_broken(responses, broken);
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), up.next()).await.is_err(), "no end");
        let e = out.next().await.unwrap().unwrap_err();
        assert_eq!(e.code(), tonic::Code::Cancelled);
        assert!(out.next().await.is_none());
    }
}
