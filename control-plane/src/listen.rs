//! The accept loop shared by berthd's HTTP listeners (the metrics endpoint, the MCP front-end).

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// Accepts connections on `listener` and hands each to `serve` until `stop` turns true; a failed accept
/// (out of descriptors, say) is logged and retried after a pause.
pub async fn accept_until_stopped(
    listener: TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
    serve: impl Fn(TcpStream),
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve(stream),
                Err(e) => {
                    tracing::warn!(error = %e, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = async { let _ = stop.wait_for(|v| *v).await; } => return,
        }
    }
}
