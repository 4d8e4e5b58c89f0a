//! Where each message from a server goes on Streamable HTTP. A response goes to the stream of the
//! request with its id, and closes it. `notifications/progress` follows its `progressToken` to the
//! request that set it. Any other server message (a notification, or a request such as sampling or
//! elicitation) goes to the one open request stream when there is exactly one (it can only be about
//! that request), else to the standalone GET stream, else to the newest request stream, else into a
//! bounded backlog the next GET stream receives first. Each message goes to exactly one stream.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;
use tokio::sync::mpsc;

/// Server messages kept for a GET stream not yet open.
pub const BACKLOG: usize = 256;
/// Messages a stream may fall behind before it is closed.
pub const STREAM_BUFFER: usize = 1024;

/// One stream's sending side: one message per item.
pub type Sink = mpsc::Sender<Vec<u8>>;

/// What a JSON-RPC message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `id` is the id's JSON text (the key requests and responses are matched by).
    Request {
        id: String,
        method: String,
    },
    Notification {
        method: String,
    },
    Response {
        id: String,
    },
    Invalid(&'static str),
}

pub fn classify(v: &Value) -> Kind {
    let Some(o) = v.as_object() else {
        return Kind::Invalid(if v.is_array() {
            "JSON-RPC batches are not supported"
        } else {
            "not a JSON-RPC object"
        });
    };
    let id = o.get("id").filter(|i| i.is_string() || i.is_number()).map(Value::to_string);
    match (o.get("method").and_then(Value::as_str), id) {
        (Some(m), Some(id)) => Kind::Request { id, method: m.to_string() },
        (Some(m), None) if !o.contains_key("id") => Kind::Notification { method: m.to_string() },
        (None, Some(id)) if o.contains_key("result") || o.contains_key("error") => Kind::Response { id },
        _ => Kind::Invalid("not a JSON-RPC request, notification or response"),
    }
}

/// A request's `params._meta.progressToken`, as JSON text.
pub fn progress_token(v: &Value) -> Option<String> {
    v.pointer("/params/_meta/progressToken").filter(|t| t.is_string() || t.is_number()).map(Value::to_string)
}

/// A JSON-RPC error response for request `id` (JSON text).
pub fn error_response(id: &str, code: i64, message: &str) -> Vec<u8> {
    let msg = Value::String(message.to_string());
    format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{msg}}}}}"#).into_bytes()
}

struct Pending {
    sink: Sink,
    /// An SSE stream (may carry related messages), or a JSON reply (only the response).
    sse: bool,
    seq: u64,
    token: Option<String>,
}

/// The routing state of one session.
#[derive(Default)]
pub struct Router {
    pending: HashMap<String, Pending>,
    progress: HashMap<String, String>,
    get: Option<Sink>,
    backlog: VecDeque<Vec<u8>>,
    seq: u64,
}

impl Router {
    /// A client request about to be forwarded; its response (and related messages when `sse`) go to `sink`.
    pub fn request(&mut self, id: String, token: Option<String>, sink: Sink, sse: bool) {
        self.seq += 1;
        if let Some(t) = &token {
            self.progress.insert(t.clone(), id.clone());
        }
        self.pending.insert(id, Pending { sink, sse, seq: self.seq, token });
    }

    /// Forgets a request whose client went away; true if it was still pending.
    pub fn forget(&mut self, id: &str) -> bool {
        match self.pending.remove(id) {
            Some(p) => {
                if let Some(t) = p.token {
                    self.progress.remove(&t);
                }
                true
            }
            None => false,
        }
    }

    /// Opens the standalone stream (replacing an older one), first giving it the backlog.
    pub fn open_get(&mut self, sink: Sink) {
        while let Some(m) = self.backlog.pop_front() {
            if sink.try_send(m).is_err() {
                break;
            }
        }
        self.get = Some(sink);
    }

    /// Routes one message from the server.
    pub fn route(&mut self, msg: Vec<u8>) {
        let Ok(v) = serde_json::from_slice::<Value>(&msg) else {
            tracing::warn!(bytes = msg.len(), "an MCP server wrote a line that is not JSON; dropped");
            return;
        };
        match classify(&v) {
            Kind::Response { id } => {
                if let Some(p) = self.pending.remove(&id) {
                    if let Some(t) = p.token {
                        self.progress.remove(&t);
                    }
                    let _ = p.sink.try_send(msg);
                } else {
                    tracing::debug!(id, "a response for no pending request (cancelled or its client gone); dropped");
                }
            }
            Kind::Notification { method } if method == "notifications/progress" => {
                let owner = v
                    .pointer("/params/progressToken")
                    .map(Value::to_string)
                    .and_then(|t| self.progress.get(&t).cloned());
                match owner.and_then(|id| self.pending.get(&id)) {
                    Some(p) if p.sse && p.sink.try_send(msg.clone()).is_ok() => {}
                    _ => self.unrelated(msg),
                }
            }
            _ => self.unrelated(msg),
        }
    }

    fn unrelated(&mut self, msg: Vec<u8>) {
        self.pending.retain(|_, p| !p.sink.is_closed());
        let mut streams: Vec<&Pending> = self.pending.values().filter(|p| p.sse).collect();
        streams.sort_by_key(|p| p.seq);
        if streams.len() == 1 && streams[0].sink.try_send(msg.clone()).is_ok() {
            return;
        }
        if let Some(g) = &self.get {
            if g.try_send(msg.clone()).is_ok() {
                return;
            }
            self.get = None;
        }
        if let Some(p) = streams.last()
            && p.sink.try_send(msg.clone()).is_ok()
        {
            return;
        }
        if self.backlog.len() == BACKLOG {
            self.backlog.pop_front();
            tracing::warn!("MCP session backlog full: the oldest undelivered server message was dropped");
        }
        self.backlog.push_back(msg);
    }

    /// The server is gone: every pending request gets an error response, every stream ends.
    pub fn fail_all(&mut self, why: &str) {
        for (id, p) in self.pending.drain() {
            let _ = p.sink.try_send(error_response(&id, -32603, why));
        }
        self.progress.clear();
        self.get = None;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sink() -> (Sink, mpsc::Receiver<Vec<u8>>) {
        mpsc::channel(16)
    }

    fn text(rx: &mut mpsc::Receiver<Vec<u8>>) -> Option<String> {
        rx.try_recv().ok().map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn classifies_messages() {
        let c = |s: &str| classify(&serde_json::from_str(s).unwrap());
        assert_eq!(c(r#"{"id":1,"method":"a"}"#), Kind::Request { id: "1".into(), method: "a".into() });
        assert_eq!(c(r#"{"id":"x","method":"a"}"#), Kind::Request { id: "\"x\"".into(), method: "a".into() });
        assert_eq!(c(r#"{"method":"n"}"#), Kind::Notification { method: "n".into() });
        assert_eq!(c(r#"{"id":2,"result":{}}"#), Kind::Response { id: "2".into() });
        assert!(matches!(c(r#"[{"id":1,"method":"a"}]"#), Kind::Invalid(_)));
        assert!(matches!(c(r#"{"id":null,"method":"a"}"#), Kind::Invalid(_)));
        assert!(matches!(c(r#"{"id":3}"#), Kind::Invalid(_)));
    }

    #[test]
    fn responses_progress_and_the_rest_each_go_to_one_stream() {
        let mut r = Router::default();
        let (a, mut ra) = sink();
        let (b, mut rb) = sink();
        let (g, mut rg) = sink();
        r.request("1".into(), Some("\"tok\"".into()), a, true);
        r.request("2".into(), None, b, true);
        r.open_get(g);
        r.route(br#"{"method":"notifications/progress","params":{"progressToken":"tok","progress":1}}"#.to_vec());
        assert!(text(&mut ra).unwrap().contains("progress"));
        assert!(text(&mut rb).is_none() && text(&mut rg).is_none());
        // Two requests open: a log message is about neither in particular → the GET stream.
        r.route(br#"{"method":"notifications/message","params":{}}"#.to_vec());
        assert!(text(&mut rg).unwrap().contains("message"));
        r.route(br#"{"id":2,"result":{}}"#.to_vec());
        assert_eq!(text(&mut rb).unwrap(), r#"{"id":2,"result":{}}"#);
        assert!(rb.try_recv().is_err(), "the stream of a finished request must close");
        // One request open: a server→client request during it goes there.
        r.route(br#"{"id":"s1","method":"sampling/createMessage"}"#.to_vec());
        assert!(text(&mut ra).unwrap().contains("sampling"));
        r.route(br#"{"id":1,"result":{}}"#.to_vec());
        assert!(text(&mut ra).unwrap().contains("result"));
    }

    #[test]
    fn without_any_stream_messages_wait_in_a_bounded_backlog() {
        let mut r = Router::default();
        for i in 0..BACKLOG + 5 {
            r.route(format!(r#"{{"method":"n","params":{{"i":{i}}}}}"#).into_bytes());
        }
        let (g, mut rg) = mpsc::channel(BACKLOG + 10);
        r.open_get(g);
        assert!(text(&mut rg).unwrap().contains(r#""i":5"#), "the oldest are dropped first");
    }

    #[test]
    fn a_dead_server_fails_every_pending_request() {
        let mut r = Router::default();
        let (a, mut ra) = sink();
        r.request("7".into(), None, a, false);
        r.fail_all("the MCP server exited with code 3");
        let e: Value = serde_json::from_str(&text(&mut ra).unwrap()).unwrap();
        assert_eq!(e["id"], 7);
        assert_eq!(e["error"]["message"], "the MCP server exited with code 3");
    }
}
