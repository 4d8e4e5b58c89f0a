//! The Streamable HTTP front-end: `POST|GET|DELETE /bots/BOT/mcp/SERVER` for a registered server, on
//! its own listener (`mcp_listen`, loopback by default). Legacy era (≤ 2025-11-25): an `initialize`
//! without a session starts a server process and mints `Mcp-Session-Id`; every later request names it;
//! one session is one process (ids never collide between clients); DELETE ends it; an unknown or ended
//! session is 404, so the client initializes again. Requests are answered as SSE (related messages
//! first, the response last) or as JSON, as the client accepts; notifications and responses get 202;
//! GET opens the stream for server messages unrelated to a request (see `route.rs`), or, with
//! `Last-Event-ID`, resumes a stream whose connection dropped (see `replay.rs`). Every request needs
//! an API token allowed on the bot, a Host naming this machine and, when sent, an Origin on it (a web
//! page elsewhere cannot drive a bot's tools through a user's browser: DNS rebinding).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::agent::v1 as pb;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use pb::mcp_session_request::Frame as In;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::front::{Body, HttpSession, Reject, full, header, launch, sse_body};
pub use super::front::{Front, Hosts};
use super::route::{self, Kind};
use crate::bots::Platform;
use crate::sync::lock;

/// Largest request body (one JSON-RPC message).
const MAX_BODY: usize = 64 << 20;
/// How long reading a request's body may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long reading a request's headers may take.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const SESSION_HEADER: &str = "mcp-session-id";
/// How many closed sessions' reasons are kept.
const EVICTED_KEPT: usize = 256;

/// Serves until `stop` turns true.
pub async fn serve<P: Platform>(listener: TcpListener, front: Arc<Front<P>>, stop: tokio::sync::watch::Receiver<bool>) {
    crate::listen::accept_until_stopped(listener, stop, "MCP front-end", move |stream| {
        // SSE replies go out as several small writes (headers, events, the last chunk): without this, Nagle's
        // algorithm holds the later ones for the client's delayed ACK (40 ms a reply).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "MCP front-end: cannot set TCP_NODELAY");
        }
        let front = front.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let front = front.clone();
                async move { Ok::<_, Infallible>(handle(&front, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "MCP front-end: connection ended with an error");
            }
        });
    })
    .await;
}

/// An HTTP error with a JSON-RPC error body (what MCP clients show).
fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response<Body> {
    Reject::new(status, code, message).into_response()
}

/// `/bots/BOT/mcp/SERVER` → (BOT, SERVER).
fn parse_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/bots/")?;
    let (bot, rest) = rest.split_once('/')?;
    let server = rest.strip_prefix("mcp/")?;
    (!bot.is_empty() && !server.is_empty() && !server.contains('/')).then_some((bot, server))
}

/// Strips `:port` from a Host value (`[::1]:80` → `[::1]`).
fn host_only(h: &str) -> &str {
    if h.starts_with('[') {
        return h.split_inclusive(']').next().unwrap_or(h);
    }
    h.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(h, |(host, _)| host)
}

/// DNS-rebinding protection: the Host must be this machine; an Origin, when sent, too.
fn check_origin(h: &HeaderMap, hosts: &Hosts) -> Result<(), Reject> {
    let forbidden = |m: &str| Err(Reject::new(StatusCode::FORBIDDEN, -32000, m));
    match header(h, "host") {
        Some(host) if hosts.accepts(host_only(host)) => {}
        Some(host) => return forbidden(&format!("Host `{host}` is not this server (DNS rebinding protection)")),
        None => return forbidden("a Host header is required"),
    }
    if let Some(origin) = header(h, "origin") {
        let host = origin.split_once("://").map(|(_, rest)| host_only(rest.trim_end_matches('/')));
        if !host.is_some_and(|o| hosts.accepts(o)) {
            return forbidden(&format!("Origin `{origin}` may not use this server (DNS rebinding protection)"));
        }
    }
    Ok(())
}

async fn handle<P: Platform>(front: &Arc<Front<P>>, req: Request<Incoming>) -> Response<Body> {
    let Some((bot, server)) = parse_path(req.uri().path()) else {
        return full(StatusCode::NOT_FOUND, "text/plain", "not found: MCP servers are at /bots/BOT/mcp/SERVER\n");
    };
    let (bot, server) = (bot.to_string(), server.to_string());
    if let Err(r) = check_origin(req.headers(), &front.hosts) {
        return r.into_response();
    }
    if !front.tokens.is_empty() {
        let presented = header(req.headers(), "authorization").and_then(|v| v.strip_prefix("Bearer "));
        let Some(scope) = presented.and_then(|t| front.tokens.verify(t.as_bytes())) else {
            // Said in the body, where a person reads it: which of the two it is and what to send. The
            // challenge names the realm and, for a wrong token, RFC 6750's `invalid_token`.
            let (message, challenge) = match presented {
                None => (
                    "no API token: send `Authorization: Bearer <token>` with a token from berthd's api_token_file \
                     (this endpoint uses static API tokens, not OAuth)",
                    "Bearer realm=\"berth\"",
                ),
                Some(_) => (
                    "invalid API token: it is not one of the tokens in berthd's api_token_file (check for a typo or a \
                     stale token)",
                    "Bearer realm=\"berth\", error=\"invalid_token\", error_description=\"not a token berthd knows\"",
                ),
            };
            let mut r = rpc_error(StatusCode::UNAUTHORIZED, -32001, message);
            r.headers_mut().insert("www-authenticate", HeaderValue::from_static(challenge));
            return r;
        };
        if !scope.sees(&bot) {
            return rpc_error(StatusCode::FORBIDDEN, -32000, &format!("this API token may not act on bot `{bot}`"));
        }
    }
    let stateless = header(req.headers(), SESSION_HEADER).is_none() && super::stateless::is_modern(req.headers());
    match *req.method() {
        Method::POST => post(front, &bot, &server, req).await,
        Method::GET | Method::DELETE if stateless => {
            let mut r = rpc_error(StatusCode::METHOD_NOT_ALLOWED, -32000, "stateless MCP (2026-07-28) is POST only");
            r.headers_mut().insert("allow", HeaderValue::from_static("POST"));
            r
        }
        Method::GET => get(front, &bot, &server, req.headers()).await,
        Method::DELETE => delete(front, &bot, &server, req.headers()),
        _ => {
            let mut r = full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST, GET or DELETE\n");
            r.headers_mut().insert("allow", HeaderValue::from_static("GET, POST, DELETE"));
            r
        }
    }
}

/// The session a request names, if it is open and belongs to this bot and server.
fn session<P: Platform>(front: &Front<P>, h: &HeaderMap, bot: &str, server: &str) -> Result<Arc<HttpSession>, Reject> {
    let Some(id) = header(h, SESSION_HEADER) else {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            -32000,
            "an Mcp-Session-Id header is required (send `initialize` first)",
        ));
    };
    match lock(&front.sessions).get(id) {
        Some(s) if s.bot == bot && s.server == server => {
            *lock(&s.last_used) = std::time::Instant::now();
            return Ok(s.clone());
        }
        _ => {}
    }
    let why = lock(&front.evicted).iter().find(|(e, _)| e == id).map(|(_, why)| why.clone());
    Err(Reject::new(
        StatusCode::NOT_FOUND,
        -32001,
        match why {
            Some(why) => format!("this MCP session was closed by berthd: {why}; initialize again"),
            None => "no such MCP session (it ended or never existed): initialize again".to_string(),
        },
    ))
}

/// The sessions to close before one more of `server` in `bot` opens, least recently used first, so that
/// both caps hold after it: `(id, bot, server, last used)` of every open session.
fn over_caps(
    open: &[(String, String, String, std::time::Instant)],
    bot: &str,
    server: &str,
    per_server: usize,
    per_bot: usize,
) -> Vec<(String, String)> {
    let mut ours: Vec<&(String, String, String, std::time::Instant)> = open.iter().filter(|s| s.1 == bot).collect();
    ours.sort_by_key(|s| s.3);
    let mut close = Vec::new();
    let mut same = ours.iter().filter(|s| s.2 == server).count();
    let mut all = ours.len();
    for s in &ours {
        let server_full = same >= per_server.max(1) && s.2 == server;
        let bot_full = all >= per_bot.max(1);
        if !(server_full || bot_full) {
            continue;
        }
        let why = if server_full {
            format!(
                "bot `{bot}` reached its limit of {per_server} open HTTP sessions with MCP server `{server}` \
                 (mcp_http_max_sessions_per_server); this was the least recently used"
            )
        } else {
            format!(
                "bot `{bot}` reached its limit of {per_bot} open MCP HTTP sessions (mcp_http_max_sessions_per_bot); \
                 this was the least recently used"
            )
        };
        close.push((s.0.clone(), why));
        all -= 1;
        if s.2 == server {
            same -= 1;
        }
    }
    close
}

/// Closes a session berthd had to end: its server's stdin is closed (MCP's shutdown), its waiting
/// requests fail with `why`, and a client using it later is told `why`.
fn evict<P: Platform>(front: &Front<P>, id: &str, why: &str) {
    let Some(s) = lock(&front.sessions).remove(id) else { return };
    tracing::info!(bot.name = %s.bot, mcp.server = %s.server, reason = why, "closing an MCP HTTP session");
    let mut evicted = lock(&front.evicted);
    evicted.push_back((id.to_string(), why.to_string()));
    while evicted.len() > EVICTED_KEPT {
        evicted.pop_front();
    }
    drop(evicted);
    lock(&s.to_server).take();
    lock(&s.router).fail_all(why);
}

fn accepts(h: &HeaderMap, what: &str) -> bool {
    h.get_all("accept").iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains(what) || v.contains("*/*"))
}

async fn post<P: Platform>(front: &Arc<Front<P>>, bot: &str, server: &str, req: Request<Incoming>) -> Response<Body> {
    let sse = accepts(req.headers(), "text/event-stream");
    if !sse && !accepts(req.headers(), "application/json") {
        return rpc_error(StatusCode::NOT_ACCEPTABLE, -32000, "accept application/json or text/event-stream");
    }
    let headers = req.headers().clone();
    let body = match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            return rpc_error(StatusCode::PAYLOAD_TOO_LARGE, -32600, &format!("cannot read the request body: {e}"));
        }
        Err(_) => return rpc_error(StatusCode::REQUEST_TIMEOUT, -32600, "the request body took over 60 s to arrive"),
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return rpc_error(StatusCode::BAD_REQUEST, -32700, &format!("the body is not JSON: {e}")),
    };
    let kind = route::classify(&value);
    if let Kind::Invalid(why) = kind {
        return rpc_error(StatusCode::BAD_REQUEST, -32600, why);
    }
    let initialize = matches!(&kind, Kind::Request { method, .. } if method == "initialize");
    if header(&headers, SESSION_HEADER).is_none() && !initialize && super::stateless::is_modern(&headers) {
        return super::stateless::post(front, bot, server, &headers, kind, value).await;
    }
    let (session, minted) = match (&kind, header(&headers, SESSION_HEADER)) {
        (Kind::Request { method, .. }, None) if method == "initialize" => match start(front, bot, server).await {
            Ok((id, s)) => {
                // Dates compare as strings; the priming event is SEP-1699's, of spec 2025-11-25.
                let version = value.pointer("/params/protocolVersion").and_then(Value::as_str);
                s.priming.store(version.is_some_and(|v| v >= "2025-11-25"), std::sync::atomic::Ordering::Relaxed);
                (s, Some(id))
            }
            Err(r) => return r.into_response(),
        },
        _ => match session(front, &headers, bot, server) {
            Ok(s) => (s, None),
            Err(r) => return r.into_response(),
        },
    };
    let Some(to_server) = lock(&session.to_server).clone() else {
        return rpc_error(StatusCode::NOT_FOUND, -32001, "the MCP session is ending: initialize again");
    };
    let mut response = match kind {
        Kind::Request { id, .. } => {
            let (sink, mut rx) = mpsc::channel(route::STREAM_BUFFER);
            lock(&session.router).request(id.clone(), route::progress_token(&value), sink, sse);
            if to_server.send(In::Message(body.to_vec())).await.is_err() {
                lock(&session.router).forget(&id);
                return rpc_error(StatusCode::NOT_FOUND, -32001, "the MCP server has exited: initialize again");
            }
            if sse {
                let priming = session.priming.load(std::sync::atomic::Ordering::Relaxed);
                sse_body(session.streams.open(rx, priming))
            } else {
                match rx.recv().await {
                    Some(m) => full(StatusCode::OK, "application/json", m),
                    None => rpc_error(StatusCode::NOT_FOUND, -32001, "the MCP session ended: initialize again"),
                }
            }
        }
        _ => {
            if to_server.send(In::Message(body.to_vec())).await.is_err() {
                return rpc_error(StatusCode::NOT_FOUND, -32001, "the MCP server has exited: initialize again");
            }
            full(StatusCode::ACCEPTED, "application/json", Bytes::new())
        }
    };
    if let Some(id) = minted
        && let Ok(v) = HeaderValue::from_str(&id)
    {
        response.headers_mut().insert(SESSION_HEADER, v);
    }
    response
}

/// Starts a legacy session: a server process, its id minted.
async fn start<P: Platform>(
    front: &Arc<Front<P>>,
    bot: &str,
    server: &str,
) -> Result<(String, Arc<HttpSession>), Reject> {
    let id = crate::bots::new_token();
    let config = &front.hub.config;
    let open: Vec<_> = lock(&front.sessions)
        .iter()
        .map(|(id, s)| (id.clone(), s.bot.clone(), s.server.clone(), *lock(&s.last_used)))
        .collect();
    for (victim, why) in
        over_caps(&open, bot, server, config.http_max_sessions_per_server, config.http_max_sessions_per_bot)
    {
        evict(front, &victim, &why);
    }
    let (f, sid) = (front.clone(), id.clone());
    let session = launch(front, bot, server, Box::new(move |_| drop(lock(&f.sessions).remove(&sid)))).await?;
    lock(&front.sessions).insert(id.clone(), session.clone());
    Ok((id, session))
}

/// GET: with `Last-Event-ID`, the rest of the stream it names; without, the stream of server messages
/// unrelated to any request (replacing an older one).
async fn get<P: Platform>(front: &Front<P>, bot: &str, server: &str, h: &HeaderMap) -> Response<Body> {
    if !accepts(h, "text/event-stream") {
        return rpc_error(StatusCode::NOT_ACCEPTABLE, -32000, "GET opens an event stream: accept text/event-stream");
    }
    let s = match session(front, h, bot, server) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    if let Some(last) = header(h, "last-event-id") {
        return match s.streams.resume(last).await {
            Ok(client) => sse_body(client),
            Err(why) => rpc_error(StatusCode::CONFLICT, -32000, &format!("cannot resume: {why}")),
        };
    }
    let (sink, rx) = mpsc::channel(route::STREAM_BUFFER);
    lock(&s.router).open_get(sink);
    let priming = s.priming.load(std::sync::atomic::Ordering::Relaxed);
    sse_body(s.streams.open(rx, priming))
}

fn delete<P: Platform>(front: &Front<P>, bot: &str, server: &str, h: &HeaderMap) -> Response<Body> {
    let s = match session(front, h, bot, server) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    if let Some(id) = header(h, SESSION_HEADER) {
        lock(&front.sessions).remove(id);
    }
    // Closing the server's stdin is MCP's shutdown; the agent escalates if it does not exit.
    lock(&s.to_server).take();
    tracing::info!(bot.name = bot, mcp.server = server, "MCP HTTP session deleted by its client");
    full(StatusCode::OK, "application/json", Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_sessions_go_first_so_both_caps_hold() {
        let t0 = std::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let s = |id: &str, bot: &str, server: &str, used: u64| (id.to_string(), bot.into(), server.into(), at(used));
        let open = vec![s("a1", "b", "fs", 5), s("a2", "b", "fs", 1), s("a3", "b", "fs", 9), s("x", "b", "web", 0)];
        // Per server 3: the oldest `fs` session goes, not the older `web` one.
        let close = over_caps(&open, "b", "fs", 3, 10);
        assert_eq!(close.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["a2"]);
        assert!(close[0].1.contains("mcp_http_max_sessions_per_server"), "{}", close[0].1);
        // Per bot 3: the oldest of all goes.
        let close = over_caps(&open, "b", "web", 10, 3);
        assert_eq!(close.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["x", "a2"]);
        assert!(close[0].1.contains("mcp_http_max_sessions_per_bot"), "{}", close[0].1);
        // Other bots' sessions never count.
        assert!(over_caps(&open, "other", "fs", 1, 1).is_empty());
    }

    #[test]
    fn paths() {
        assert_eq!(parse_path("/bots/a/mcp/fs"), Some(("a", "fs")));
        assert_eq!(parse_path("/bots/a/mcp/"), None);
        assert_eq!(parse_path("/bots//mcp/x"), None);
        assert_eq!(parse_path("/bots/a/mcp/x/y"), None);
        assert_eq!(parse_path("/mcp"), None);
    }

    #[test]
    fn hosts_and_origins() {
        let local: std::net::SocketAddr = "127.0.0.1:7000".parse().unwrap_or_else(|_| unreachable!());
        let local = Hosts { local, allowed: vec!["mcp.example.org".into()] };
        for ok in ["localhost", "127.0.0.1", "[::1]", "LOCALHOST", "mcp.example.org"] {
            assert!(local.accepts(ok), "{ok}");
        }
        for bad in ["evil.example", "10.0.0.1", "localhost.evil.example"] {
            assert!(!local.accepts(bad), "{bad}");
        }
        assert_eq!(host_only("localhost:7000"), "localhost");
        assert_eq!(host_only("[::1]:7000"), "[::1]");
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("localhost:7000"));
        assert!(check_origin(&h, &local).is_ok());
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert!(check_origin(&h, &local).is_err());
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:3000"));
        assert!(check_origin(&h, &local).is_ok());
        h.insert("host", HeaderValue::from_static("evil.example:7000"));
        assert!(check_origin(&h, &local).is_err());
    }
}
