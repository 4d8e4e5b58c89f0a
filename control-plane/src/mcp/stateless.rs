//! Stateless Streamable HTTP (2026-07-28): a POST without a session whose `MCP-Protocol-Version` is
//! modern. The spec lets unrelated requests share one stdio process, so each (bot, server) has one shared
//! process, started on the first such request and reaped like any session when idle. Clients count ids
//! from the same numbers, so every request gets an id (and progress token) of berthd's own before it
//! reaches the server, and the server's replies get the client's back. The headers must match the body
//! (`Mcp-Method`, `Mcp-Name`: 400 with -32020 otherwise). The reply is JSON when the response is the
//! first thing the server sends, else an SSE stream of the related messages ending with it. A client
//! that closes the stream (or connection) before the response cancels the request: the server gets
//! `notifications/cancelled`, as stdio requires. A server that answers `server/discover` with an error
//! is legacy-only: its shared process is stopped (the client falls back to `initialize`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine;
use bytes::Bytes;
use hyper::header::HeaderMap;
use hyper::{Response, StatusCode};
use pb::mcp_session_request::Frame as In;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::front::{Body, Front, HttpSession, Reject, full, header, launch, sse_response};
use super::route::{self, Kind};
use crate::bots::Platform;
use crate::sync::lock;
use berth_proto::agent::v1 as pb;

/// Error codes the 2026-07-28 spec reserves.
const HEADER_MISMATCH: i64 = -32020;

/// A request in the stateless era: its `MCP-Protocol-Version` is not a legacy (2024/2025) one.
pub(super) fn is_modern(h: &HeaderMap) -> bool {
    header(h, "mcp-protocol-version").is_some_and(|v| !v.starts_with("2024-") && !v.starts_with("2025-"))
}

/// A header value, decoding the `=?base64?…?=` form used for non-ASCII values.
fn decoded(h: &HeaderMap, name: &str) -> Option<String> {
    let v = header(h, name)?;
    match v.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).ok().and_then(|b| String::from_utf8(b).ok()),
        None => Some(v.to_string()),
    }
}

/// `Mcp-Method` (and `Mcp-Name` where the spec requires it) must say what the body says.
fn check_headers(h: &HeaderMap, method: &str, v: &Value) -> Result<(), Reject> {
    let mismatch = |m: String| Err(Reject::new(StatusCode::BAD_REQUEST, HEADER_MISMATCH, m));
    match decoded(h, "mcp-method") {
        Some(m) if m == method => {}
        Some(m) => return mismatch(format!("Mcp-Method `{m}` does not match the body's method `{method}`")),
        None => return mismatch("the Mcp-Method header is required".into()),
    }
    let named = match method {
        "tools/call" | "prompts/get" => v.pointer("/params/name"),
        "resources/read" => v.pointer("/params/uri"),
        _ => return Ok(()),
    };
    let named = named.and_then(Value::as_str).unwrap_or_default();
    match decoded(h, "mcp-name") {
        Some(n) if n == named => Ok(()),
        Some(n) => mismatch(format!("Mcp-Name `{n}` does not match the body's `{named}`")),
        None => mismatch(format!("the Mcp-Name header is required for {method}")),
    }
}

/// HTTP status for a JSON-RPC error the server answered (the 2026-07-28 transport's mapping).
fn status_of(response: &Value) -> StatusCode {
    match response.pointer("/error/code").and_then(Value::as_i64) {
        Some(-32601) => StatusCode::NOT_FOUND,
        Some(-32602 | -32600 | -32020 | -32021 | -32022) => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    }
}

/// What the client called its request, to give back.
struct Original {
    ours: String,
    id: Value,
    token: Option<(String, Value)>,
}

impl Original {
    /// The server's message with the client's id and token back in place.
    fn restore(&self, msg: Vec<u8>) -> Vec<u8> {
        let Ok(mut v) = serde_json::from_slice::<Value>(&msg) else { return msg };
        let mut changed = false;
        if v.get("id").map(Value::to_string).as_deref() == Some(self.ours.as_str()) {
            v["id"] = self.id.clone();
            changed = true;
        }
        if let Some((ours, theirs)) = &self.token
            && let Some(t) = v.pointer_mut("/params/progressToken")
            && serde_json::to_string(t).is_ok_and(|j| j == *ours)
        {
            *t = theirs.clone();
            changed = true;
        }
        if let Some(s) = v.pointer_mut("/params/_meta/io.modelcontextprotocol~1subscriptionId")
            && serde_json::to_string(s).is_ok_and(|j| j == self.ours)
        {
            *s = self.id.clone();
            changed = true;
        }
        if changed { serde_json::to_vec(&v).unwrap_or(msg) } else { msg }
    }
}

/// Cancels the request if it is still pending when the client's side goes away.
struct CancelOnDrop {
    session: Arc<HttpSession>,
    ours: String,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !lock(&self.session.router).forget(&self.ours) {
            return;
        }
        let note = format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{},"reason":"the HTTP client closed the response stream"}}}}"#,
            self.ours
        );
        if let Some(tx) = lock(&self.session.to_server).as_ref() {
            let _ = tx.try_send(In::Message(note.into_bytes()));
        }
        tracing::debug!(request = %self.ours, "stateless MCP request abandoned by its client: cancelled");
    }
}

/// The shared process for (bot, server), started when there is none.
async fn shared<P: Platform>(front: &Arc<Front<P>>, bot: &str, server: &str) -> Result<Arc<HttpSession>, Reject> {
    let key = (bot.to_string(), server.to_string());
    if let Some(s) = lock(&front.stateless).get(&key)
        && lock(&s.to_server).is_some()
    {
        return Ok(s.clone());
    }
    let (f, k) = (front.clone(), key.clone());
    let on_end = Box::new(move |s: &Arc<HttpSession>| {
        let mut map = lock(&f.stateless);
        if map.get(&k).is_some_and(|cur| Arc::ptr_eq(cur, s)) {
            map.remove(&k);
        }
    });
    let s = launch(front, bot, server, on_end).await?;
    // Two first requests at once may both start one: the first in the map wins, the other is stopped.
    let mut map = lock(&front.stateless);
    match map.get(&key) {
        Some(cur) if lock(&cur.to_server).is_some() => {
            lock(&s.to_server).take();
            Ok(cur.clone())
        }
        _ => {
            map.insert(key, s.clone());
            Ok(s)
        }
    }
}

pub(super) async fn post<P: Platform>(
    front: &Arc<Front<P>>,
    bot: &str,
    server: &str,
    headers: &HeaderMap,
    kind: Kind,
    mut value: Value,
) -> Response<Body> {
    let method = match kind {
        Kind::Request { method, .. } => method,
        Kind::Notification { method } => return notify(front, bot, server, headers, &method, value).await,
        Kind::Response { .. } | Kind::Invalid(_) => {
            return Reject::new(StatusCode::BAD_REQUEST, -32600, "a stateless (2026-07-28) POST carries a request")
                .into_response();
        }
    };
    if let Err(r) = check_headers(headers, &method, &value) {
        return r.into_response();
    }
    let session = match shared(front, bot, server).await {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let n = front.next_id.fetch_add(1, Ordering::Relaxed);
    let ours = Value::String(format!("berth-{n}"));
    let original = Original {
        ours: ours.to_string(),
        id: std::mem::replace(&mut value["id"], ours),
        token: value.pointer_mut("/params/_meta/progressToken").map(|t| {
            let mine = Value::String(format!("berth-p-{n}"));
            (mine.to_string(), std::mem::replace(t, mine))
        }),
    };
    let (sink, mut rx) = mpsc::channel(route::STREAM_BUFFER);
    lock(&session.router).request(original.ours.clone(), original.token.as_ref().map(|t| t.0.clone()), sink, true);
    let guard = CancelOnDrop { session: session.clone(), ours: original.ours.clone() };
    let Some(tx) = lock(&session.to_server).clone() else {
        return Reject::new(StatusCode::SERVICE_UNAVAILABLE, -32000, "the MCP server is restarting: retry")
            .into_response();
    };
    if tx.send(In::Message(value.to_string().into_bytes())).await.is_err() {
        return Reject::new(StatusCode::SERVICE_UNAVAILABLE, -32000, "the MCP server has exited: retry")
            .into_response();
    }
    // The first message decides: the response itself → JSON; anything else → an SSE stream.
    let Some(first) = rx.recv().await else {
        return Reject::new(StatusCode::SERVICE_UNAVAILABLE, -32000, "the MCP server ended without answering")
            .into_response();
    };
    let first = original.restore(first);
    let parsed: Value = serde_json::from_slice(&first).unwrap_or(Value::Null);
    if matches!(route::classify(&parsed), Kind::Response { .. }) {
        drop(guard);
        if method == "server/discover" && parsed.get("error").is_some() {
            // A legacy-only server: no use keeping a process for stateless requests.
            let key = (bot.to_string(), server.to_string());
            if let Some(s) = lock(&front.stateless).remove(&key) {
                lock(&s.to_server).take();
            }
        }
        return full(status_of(&parsed), "application/json", first);
    }
    let rest = ReceiverStream::new(rx).map(move |m| {
        let _keep = &guard;
        original.restore(m)
    });
    sse_response(tokio_stream::once(first).chain(rest))
}

/// A notification POSTed without a session: accepted, and passed to the shared process as it is.
async fn notify<P: Platform>(
    front: &Arc<Front<P>>,
    bot: &str,
    server: &str,
    headers: &HeaderMap,
    method: &str,
    value: Value,
) -> Response<Body> {
    if let Err(r) = check_headers(headers, method, &value) {
        return r.into_response();
    }
    // Stateless clients cancel by closing the stream; other notifications have no session to belong
    // to, so they go to the shared process as they are.
    if method == "notifications/cancelled" {
        return full(StatusCode::ACCEPTED, "application/json", Bytes::new());
    }
    let tx = match shared(front, bot, server).await {
        Ok(s) => lock(&s.to_server).clone(),
        Err(r) => return r.into_response(),
    };
    if let Some(tx) = tx {
        let _ = tx.send(In::Message(value.to_string().into_bytes())).await;
    }
    full(StatusCode::ACCEPTED, "application/json", Bytes::new())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn headers_must_match_the_body() {
        let v: Value = serde_json::from_str(r#"{"id":1,"method":"tools/call","params":{"name":"añadir"}}"#).unwrap();
        let mut h = HeaderMap::new();
        assert!(check_headers(&h, "tools/call", &v).is_err(), "missing Mcp-Method");
        h.insert("mcp-method", HeaderValue::from_static("tools/call"));
        assert!(check_headers(&h, "tools/call", &v).is_err(), "missing Mcp-Name");
        h.insert("mcp-name", HeaderValue::from_static("other"));
        assert!(check_headers(&h, "tools/call", &v).is_err(), "wrong Mcp-Name");
        let b64 = base64::engine::general_purpose::STANDARD.encode("añadir");
        h.insert("mcp-name", HeaderValue::from_str(&format!("=?base64?{b64}?=")).unwrap());
        assert!(check_headers(&h, "tools/call", &v).is_ok());
        h.insert("mcp-method", HeaderValue::from_static("tools/list"));
        assert!(check_headers(&h, "tools/call", &v).is_err(), "wrong Mcp-Method");
    }

    #[test]
    fn ids_tokens_and_subscriptions_are_given_back() {
        let o = Original {
            ours: "\"berth-7\"".into(),
            id: Value::from(1),
            token: Some(("\"berth-p-7\"".into(), Value::from("tok"))),
        };
        let back: Value = serde_json::from_slice(&o.restore(br#"{"id":"berth-7","result":{}}"#.to_vec())).unwrap();
        assert_eq!(back["id"], 1);
        let p = o.restore(
            br#"{"method":"notifications/progress","params":{"progressToken":"berth-p-7","progress":1}}"#.to_vec(),
        );
        assert_eq!(serde_json::from_slice::<Value>(&p).unwrap()["params"]["progressToken"], "tok");
        let s = o.restore(
            br#"{"method":"n","params":{"_meta":{"io.modelcontextprotocol/subscriptionId":"berth-7"}}}"#.to_vec(),
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&s).unwrap()["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"],
            1
        );
        let untouched = br#"{"id":"other","result":{}}"#.to_vec();
        assert_eq!(o.restore(untouched.clone()), untouched);
    }

    #[test]
    fn error_codes_map_to_statuses() {
        let s = |c: i64| status_of(&serde_json::json!({"id": 1, "error": {"code": c, "message": "m"}}));
        assert_eq!(s(-32601), StatusCode::NOT_FOUND);
        assert_eq!(s(-32602), StatusCode::BAD_REQUEST);
        assert_eq!(s(-32022), StatusCode::BAD_REQUEST);
        assert_eq!(s(-32603), StatusCode::OK);
    }
}
