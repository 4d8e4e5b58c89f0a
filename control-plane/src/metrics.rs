//! Prometheus metrics: one process-wide registry ([`metrics()`]) that domain code counts into, the gRPC
//! latency layer ([`RpcLatencyLayer`]), and the text encoding served on `/metrics` (`http.rs`). Series:
//!
//! - `berth_bots{state}`: bots by lifecycle state (read from the database at scrape time);
//! - `berth_operations_total{kind,result}`: snapshot/rollback/export/import/backup/restore outcomes;
//! - `berth_rpc_duration_seconds{method}`: time to answer an API call (for a stream: to its headers);
//! - `berth_reconcile_repairs_total{kind}`: what the reconciler fixed (network, firewall, lease, …);
//! - `berth_bot_restarts_total{reason}`: restarts by the supervisor (task exited, agent unresponsive);
//! - `berth_oom_kills_total`: processes in bots killed by the kernel's OOM killer, as the reconciler saw;
//! - `berth_reconcile_passes_total`, `berth_mcp_sessions` (open) and `berth_mcp_sessions_total`;
//! - `berth_events_spilled` (bot events waiting on disk for the database) and `berth_events_dropped_total`.

use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::codegen::http::Request;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every series berthd exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub bots: Family<StateLabel, Gauge>,
    pub operations: Family<OperationLabels, Counter>,
    pub rpc_seconds: HistogramFamily<MethodLabel>,
    pub repairs: Family<KindLabel, Counter>,
    pub restarts: Family<ReasonLabel, Counter>,
    pub reconcile_passes: Counter,
    pub oom_kills: Counter,
    pub mcp_sessions: Gauge,
    pub mcp_sessions_total: Counter,
    pub nodes: Family<StateLabel, Gauge>,
    pub events_spilled: Gauge,
    pub events_dropped: Counter,
}

fn rpc_histogram() -> Histogram {
    // 100 µs to ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("berth");
        let m = Metrics {
            bots: Family::default(),
            operations: Family::default(),
            rpc_seconds: Family::new_with_constructor(rpc_histogram as fn() -> Histogram),
            repairs: Family::default(),
            restarts: Family::default(),
            reconcile_passes: Counter::default(),
            oom_kills: Counter::default(),
            mcp_sessions: Gauge::default(),
            mcp_sessions_total: Counter::default(),
            nodes: Family::default(),
            events_spilled: Gauge::default(),
            events_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("bots", "Bots by lifecycle state", m.bots.clone());
        registry.register("operations", "Data operations by kind and result", m.operations.clone());
        registry.register(
            "rpc_duration_seconds",
            "Time to answer an API call (to the response headers, for streams)",
            m.rpc_seconds.clone(),
        );
        registry.register("reconcile_repairs", "Repairs made by the reconciler, by kind", m.repairs.clone());
        registry.register("bot_restarts", "Bot restarts by the supervisor, by reason", m.restarts.clone());
        registry.register("reconcile_passes", "Reconcile passes completed", m.reconcile_passes.clone());
        registry.register("oom_kills", "Processes in bots killed by the kernel's OOM killer", m.oom_kills.clone());
        registry.register("mcp_sessions", "MCP sessions open through berthd", m.mcp_sessions.clone());
        registry.register("mcp_sessions_opened", "MCP sessions opened through berthd", m.mcp_sessions_total.clone());
        registry.register("cluster_nodes", "Cluster nodes by state (active, cordoned, lost)", m.nodes.clone());
        registry.register(
            "events_spilled",
            "Bot events waiting in the spill file for the database",
            m.events_spilled.clone(),
        );
        registry.register(
            "events_dropped",
            "Bot events lost: the event queue was full or the spill file failed",
            m.events_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text of every series.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn repaired(&self, kind: &str) {
        self.repairs.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    pub fn oom_killed(&self, n: u64) {
        self.oom_kills.inc_by(n);
    }

    pub fn restarted(&self, reason: &str) {
        self.restarts.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }

    pub fn operation_ended(&self, kind: &str, result: &str) {
        self.operations.get_or_create(&OperationLabels { kind: kind.into(), result: result.into() }).inc();
    }

    /// Sets the cluster-nodes-by-state gauges (every state, zero included).
    pub fn set_node_counts(&self, counts: &[(&str, i64)]) {
        for (state, n) in counts {
            self.nodes.get_or_create(&StateLabel { state: (*state).into() }).set(*n);
        }
    }

    /// Sets the bots-by-state gauges (every state, zero included, so a series never goes stale).
    pub fn set_bot_counts(&self, counts: &[(&str, i64)]) {
        for (state, n) in counts {
            self.bots.get_or_create(&StateLabel { state: (*state).into() }).set(*n);
        }
    }

    /// Counts an MCP session as open until the returned guard is dropped.
    pub fn mcp_session(&self) -> McpSessionGuard {
        self.mcp_sessions.inc();
        self.mcp_sessions_total.inc();
        McpSessionGuard(())
    }
}

/// Open while an MCP session is (see [`Metrics::mcp_session`]).
#[derive(Debug)]
pub struct McpSessionGuard(());

impl Drop for McpSessionGuard {
    fn drop(&mut self) {
        metrics().mcp_sessions.dec();
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// A tower layer timing every gRPC call by method (`/package.Service/Method`).
#[derive(Debug, Clone, Default)]
pub struct RpcLatencyLayer;

/// The gRPC method a request calls (`/package.Service/Method`), which [`RpcLatency`] puts in the
/// request's extensions for the handlers (forwarding a call to another node calls the same method).
#[derive(Debug, Clone)]
pub struct RpcMethod(pub String);

impl<S> tower::Layer<S> for RpcLatencyLayer {
    type Service = RpcLatency<S>;
    fn layer(&self, inner: S) -> RpcLatency<S> {
        RpcLatency { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcLatency<S> {
    inner: S,
}

impl<S, B, R> tower::Service<Request<B>> for RpcLatency<S>
where
    S: tower::Service<Request<B>, Response = tonic::codegen::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        req.extensions_mut().insert(RpcMethod(method.clone()));
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            // A method berthd does not serve (UNIMPLEMENTED, status 12) is counted under one label: the
            // path is the caller's choice, and each label is a series kept for good.
            let unknown = r.as_ref().is_ok_and(|r| r.headers().get("grpc-status").is_some_and(|s| s == "12"));
            let method = if unknown { "unknown".to_string() } else { method };
            metrics().rpc_seconds.get_or_create(&MethodLabel { method }).observe(started.elapsed().as_secs_f64());
            r
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn series_are_named_and_counted() {
        let m = Metrics::new();
        m.operations.get_or_create(&OperationLabels { kind: "snapshot".into(), result: "succeeded".into() }).inc();
        m.rpc_seconds.get_or_create(&MethodLabel { method: "/x.Y/Z".into() }).observe(0.002);
        m.bots.get_or_create(&StateLabel { state: "running".into() }).set(3);
        let text = m.encode();
        assert!(text.contains("berth_operations_total{kind=\"snapshot\",result=\"succeeded\"} 1"), "{text}");
        assert!(text.contains("berth_rpc_duration_seconds_count{method=\"/x.Y/Z\"} 1"), "{text}");
        assert!(text.contains("berth_bots{state=\"running\"} 3"), "{text}");
    }
}
