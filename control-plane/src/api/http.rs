//! The HTTP endpoint for operators: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (the database and containerd answer). Plain HTTP/1.1 on its own listener, loopback by
//! default; it exposes counts, never bot data or tokens.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::bots::BotManager;
use crate::bots::Platform;

/// How long one request may take (a readiness check included) before the connection is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `stop` turns true.
pub async fn serve<P: Platform>(
    listener: TcpListener,
    manager: Arc<BotManager<P>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    crate::listen::accept_until_stopped(listener, stop, "metrics endpoint", move |stream| {
        let manager = manager.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let manager = manager.clone();
                async move { Ok::<_, Infallible>(handle(&manager, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(e)) = tokio::time::timeout(REQUEST_TIMEOUT, conn).await {
                tracing::debug!(error = %e, "metrics endpoint: connection failed");
            }
        });
    })
    .await;
}

async fn handle<P: Platform, B>(manager: &BotManager<P>, req: Request<B>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => match manager.count_by_state().await {
            Ok(counts) => {
                let m = crate::metrics::metrics();
                m.set_bot_counts(&counts);
                reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", m.encode())
            }
            Err(e) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("cannot count bots: {}\n", crate::error::chain(&e)),
            ),
        },
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match manager.ready().await {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("{}\n", crate::error::chain(&e))),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    r
}
