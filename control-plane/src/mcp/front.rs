//! The Streamable HTTP front-end's state and the plumbing both spec eras share (`http.rs` for sessions,
//! `stateless.rs` for 2026-07-28): the sessions' server processes, replies and refusals, SSE bodies,
//! and the host names the front-end answers to.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use berth_proto::agent::v1 as pb;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use pb::mcp_session_request::Frame as In;
use pb::mcp_session_response::Frame as Out;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::McpHub;
use super::route::Router;
use crate::auth::ApiTokens;
use crate::bots::Platform;
use crate::sync::lock;

pub(super) type Body = BoxBody<Bytes, Infallible>;

/// One legacy session: one server process.
pub(super) struct HttpSession {
    pub(super) bot: String,
    pub(super) server: String,
    /// When a client last used it (for closing the least recently used first).
    pub(super) last_used: Mutex<std::time::Instant>,
    pub(super) to_server: Mutex<Option<mpsc::Sender<In>>>,
    pub(super) router: Mutex<Router>,
    /// Its SSE streams, resumable with `Last-Event-ID`.
    pub(super) streams: super::replay::Streams,
    /// Its client speaks spec 2025-11-25 or later, so its SSE streams open with a priming event.
    pub(super) priming: std::sync::atomic::AtomicBool,
}

/// The front-end's state.
pub struct Front<P: Platform> {
    pub(super) hub: Arc<McpHub<P>>,
    pub(super) tokens: ApiTokens,
    pub(super) hosts: Hosts,
    pub(super) sessions: Mutex<HashMap<String, Arc<HttpSession>>>,
    /// Sessions berthd closed to stay within its caps, with why (the latest [`EVICTED_KEPT`]), so their
    /// clients are told rather than just "no such session".
    pub(super) evicted: Mutex<std::collections::VecDeque<(String, String)>>,
    /// The shared process of each (bot, server) serving stateless (2026-07-28) requests.
    pub(super) stateless: Mutex<HashMap<(String, String), Arc<HttpSession>>>,
    /// Request ids and progress tokens given to stateless requests (unique per process).
    pub(super) next_id: std::sync::atomic::AtomicU64,
}

impl<P: Platform> Front<P> {
    pub fn new(hub: Arc<McpHub<P>>, tokens: ApiTokens, hosts: Hosts) -> Arc<Self> {
        Arc::new(Front {
            hub,
            tokens,
            hosts,
            sessions: Mutex::new(HashMap::new()),
            evicted: Mutex::new(std::collections::VecDeque::new()),
            stateless: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }
}

pub(super) fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A refused request, turned into its response at the end.
#[derive(Debug)]
pub(super) struct Reject {
    status: StatusCode,
    code: i64,
    message: String,
}

impl Reject {
    pub(super) fn new(status: StatusCode, code: i64, message: impl Into<String>) -> Reject {
        Reject { status, code, message: message.into() }
    }

    pub(super) fn into_response(self) -> Response<Body> {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": null, "error": {"code": self.code, "message": self.message}});
        full(self.status, "application/json", body.to_string())
    }
}

pub(super) fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The host names the front-end answers to: loopback names, the listener's own address, and the names
/// the operator allowed (`mcp_allowed_hosts`, e.g. the name a TLS proxy forwards).
#[derive(Debug, Clone)]
pub struct Hosts {
    pub local: SocketAddr,
    pub allowed: Vec<String>,
}

impl Hosts {
    /// Whether `host` (no port; brackets allowed) is one of ours.
    pub(super) fn accepts(&self, host: &str) -> bool {
        let h = host.trim_start_matches('[').trim_end_matches(']');
        if h.eq_ignore_ascii_case("localhost") || self.allowed.iter().any(|a| a.eq_ignore_ascii_case(h)) {
            return true;
        }
        match h.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.is_loopback() || (!self.local.ip().is_unspecified() && ip == self.local.ip()),
            Err(_) => false,
        }
    }
}

/// A `text/event-stream` reply without event ids: one event per message of `messages`, ending when it does.
pub(super) fn sse_response(
    messages: impl tokio_stream::Stream<Item = Vec<u8>> + Send + Sync + 'static,
) -> Response<Body> {
    sse_frames(messages.map(|m| super::replay::event(None, &m)))
}

/// The reply carrying a resumable stream's events.
pub(super) fn sse_body(client: super::replay::Client) -> Response<Body> {
    sse_frames(ReceiverStream::new(client))
}

fn sse_frames(frames: impl tokio_stream::Stream<Item = Bytes> + Send + Sync + 'static) -> Response<Body> {
    let events = frames.map(|f| Ok::<_, Infallible>(Frame::data(f)));
    let mut r = Response::new(StreamBody::new(events).boxed());
    let h = r.headers_mut();
    h.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// The HTTP front-end's one mapping of berthd's errors: a status and what the client is told (an internal
/// failure as its message and an id, the whole chain in the log under that id).
pub(super) fn http_status(e: &crate::error::Error) -> (StatusCode, String) {
    use crate::error::Error;
    match e {
        Error::NotFound(m) => (StatusCode::NOT_FOUND, m.clone()),
        Error::InvalidArgument(m) | Error::OutOfRange(m) => (StatusCode::BAD_REQUEST, m.clone()),
        Error::FailedPrecondition(m) | Error::AlreadyExists(m) => (StatusCode::CONFLICT, m.clone()),
        Error::ResourceExhausted(m) | Error::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m.clone()),
        e @ Error::Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, crate::error::with_id(e)),
    }
}

/// Called once when a session's server has gone.
pub(super) type OnEnd = Box<dyn FnOnce(&Arc<HttpSession>) + Send>;

/// Starts a server process and the task routing its messages; `on_end` runs when it has gone.
pub(super) async fn launch<P: Platform>(
    front: &Arc<Front<P>>,
    bot: &str,
    server: &str,
    on_end: OnEnd,
) -> Result<Arc<HttpSession>, Reject> {
    let idle_ms = u32::try_from(front.hub.config.http_idle_timeout.as_millis()).unwrap_or(u32::MAX);
    let io = front.hub.open_anywhere(bot, server, idle_ms).await.map_err(|e| {
        let (status, message) = http_status(&e);
        Reject::new(status, -32000, format!("cannot start MCP server `{server}` in bot `{bot}`: {message}"))
    })?;
    let session = Arc::new(HttpSession {
        bot: bot.to_string(),
        server: server.to_string(),
        last_used: Mutex::new(std::time::Instant::now()),
        to_server: Mutex::new(Some(io.to_server)),
        router: Mutex::new(Router::default()),
        streams: super::replay::Streams::default(),
        priming: std::sync::atomic::AtomicBool::new(false),
    });
    tracing::info!(bot.name = bot, mcp.server = server, pid = io.pid, "MCP HTTP server process started");
    let s = session.clone();
    let mut from_server = io.from_server;
    tokio::spawn(async move {
        let why = loop {
            match from_server.recv().await {
                Some(Ok(Out::Message(m))) => lock(&s.router).route(m),
                Some(Ok(Out::Exited(e))) => {
                    let tail = String::from_utf8_lossy(&e.stderr_tail).trim().to_string();
                    break if tail.is_empty() {
                        format!("the MCP server {}", e.message)
                    } else {
                        format!("the MCP server {}; its stderr ended with: {tail}", e.message)
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("the MCP session failed: {e}"),
                None => break "the MCP session ended".to_string(),
            }
        };
        tracing::info!(bot.name = %s.bot, mcp.server = %s.server, reason = %why, "MCP HTTP server process ended");
        on_end(&s);
        lock(&s.to_server).take();
        lock(&s.router).fail_all(&why);
    });
    Ok(session)
}
