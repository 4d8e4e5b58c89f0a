//! Domain ⇄ protobuf for the control-plane API.

use berth_proto::controlplane::v1 as pb;

use crate::bots::limits::{Ask, LimitsRequest};
use crate::bots::model::{BotEvent, BotRecord, BotState};

pub fn state(s: BotState) -> pb::BotState {
    match s {
        BotState::Creating => pb::BotState::Creating,
        BotState::Stopped => pb::BotState::Stopped,
        BotState::Starting => pb::BotState::Starting,
        BotState::Running => pb::BotState::Running,
        BotState::Stopping => pb::BotState::Stopping,
        BotState::Deleting => pb::BotState::Deleting,
        BotState::Error => pb::BotState::Error,
    }
}

pub fn bot(b: BotRecord, pid: Option<u32>) -> pb::Bot {
    pb::Bot {
        name: b.name,
        state: state(b.state) as i32,
        image: b.image,
        labels: b.labels.into_iter().collect(),
        resources: Some(pb::Resources {
            memory_bytes: b.limits.memory_bytes.unwrap_or(0),
            cpu_millis: b.limits.cpu_millis.unwrap_or(0),
            pids: b.limits.pids.unwrap_or(0),
            unlimited_memory: b.limits.memory_bytes.is_none(),
            unlimited_cpu: b.limits.cpu_millis.is_none(),
            unlimited_pids: b.limits.pids.is_none(),
            disk_bytes: b.limits.disk_bytes.unwrap_or(0),
            unlimited_disk: b.limits.disk_bytes.is_none(),
        }),
        created_at_ms: b.created_at_ms,
        updated_at_ms: b.updated_at_ms,
        last_error: b.last_error,
        pid: pid.unwrap_or(0),
        env_names: b.env.into_keys().collect(),
        ip: b.network.map(|n| n.ip).unwrap_or_default(),
        restart_count: b.restart_count,
        last_exit: b.last_exit,
        desired_running: b.desired_running,
        egress: Some(egress_pb(&b.egress)),
        disk_used_bytes: 0,
        disk_quota_enforced: false,
        node: b.node.clone(),
        node_lost_since_ms: 0,
    }
}

pub fn egress_pb(e: &crate::network::Egress) -> pb::Egress {
    use crate::network::Egress;
    use pb::egress::Mode;
    match e {
        Egress::AllowAll => pb::Egress { mode: Mode::AllowAll as i32, allow_cidrs: vec![] },
        Egress::DenyAll => pb::Egress { mode: Mode::DenyAll as i32, allow_cidrs: vec![] },
        Egress::AllowList(c) => pb::Egress { mode: Mode::AllowList as i32, allow_cidrs: c.clone() },
    }
}

/// The domain policy of a request's `Egress` (unset = allow all); INVALID_ARGUMENT names what is wrong.
pub fn egress(e: Option<pb::Egress>) -> Result<crate::network::Egress, tonic::Status> {
    use crate::network::Egress;
    use pb::egress::Mode;
    let Some(e) = e else { return Ok(Egress::AllowAll) };
    let bad = |m: String| tonic::Status::invalid_argument(format!("egress: {m}"));
    match Mode::try_from(e.mode) {
        Ok(Mode::AllowAll) | Ok(Mode::DenyAll) if !e.allow_cidrs.is_empty() => {
            Err(bad("allow_cidrs is only for MODE_ALLOW_LIST".into()))
        }
        Ok(Mode::AllowAll) => Ok(Egress::AllowAll),
        Ok(Mode::DenyAll) => Ok(Egress::DenyAll),
        Ok(Mode::AllowList) => Egress::allow_list(e.allow_cidrs).map_err(bad),
        Err(_) => Err(bad(format!("unknown mode {}", e.mode))),
    }
}

/// A create's limits: 0 = berthd's default, `unlimited_*` = none.
pub fn limits(r: Option<pb::Resources>) -> LimitsRequest {
    let r = r.unwrap_or_default();
    let ask = |unlimited: bool, v: u64| match (unlimited, v) {
        (true, _) => Ask::Unlimited,
        (false, 0) => Ask::Default,
        (false, v) => Ask::Set(v),
    };
    LimitsRequest {
        memory_bytes: ask(r.unlimited_memory, r.memory_bytes),
        cpu_millis: ask(r.unlimited_cpu, r.cpu_millis),
        pids: ask(r.unlimited_pids, r.pids),
        disk_bytes: ask(r.unlimited_disk, r.disk_bytes),
    }
}

pub fn event(e: BotEvent) -> pb::BotEvent {
    pb::BotEvent {
        name: e.name,
        state: state(e.state) as i32,
        kind: e.kind,
        message: e.message,
        at_ms: e.at_ms,
        id: e.seq,
        node: e.node,
    }
}

pub fn snapshot(s: crate::bots::snapshot::Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        name: s.name,
        parent: s.parent.unwrap_or_default(),
        created_at_ms: s.created_at_ms,
        size_bytes: s.size_bytes,
    }
}

pub fn operation(o: crate::bots::ops::Operation) -> pb::Operation {
    pb::Operation {
        id: o.id,
        bot: o.bot,
        kind: o.kind,
        state: o.state.as_str().to_string(),
        target: o.target,
        progress_done: o.progress_done,
        progress_total: o.progress_total,
        error: o.error,
        created_at_ms: o.created_at_ms,
        updated_at_ms: o.updated_at_ms,
    }
}
