//! Berth's wire protocol. This crate owns the `.proto` files under `berth/` and exposes the Rust code
//! generated from them; nothing else in the workspace defines wire types.
//!
//! - [`agent::v1`]: `ContainerService`, spoken between the control plane and `berth-agent` (and served by
//!   `berthd` too, routed by the `berth-bot` metadata).
//! - [`controlplane::v1`]: `BotService` (lifecycle), `DataService` (snapshots, export/import, operations), `ImageService`.

/// What both ends of a Berth gRPC connection must agree on, named once: berthd's API, its proxy of the
/// agent protocol, and the agent.
pub mod wire {
    /// Largest message sent or accepted, on every Berth gRPC connection.
    pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
    /// HTTP/2 flow-control windows. h2 closes a whole connection (GOAWAY `ENHANCE_YOUR_CALM`) once the
    /// small DATA frames it buffers unread exceed half the connection window. A small per-stream window
    /// bounds what one stalled stream (a watch or exec output nobody reads) can buffer, and a large
    /// connection window keeps many such streams from ever reaching the limit. Over a Unix socket a
    /// 256 KiB window still moves GiB/s.
    pub const STREAM_WINDOW_BYTES: u32 = 256 << 10;
    /// See [`STREAM_WINDOW_BYTES`].
    pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;
    /// Metadata naming the bot an agent-protocol call sent to berthd is for.
    pub const BOT_HEADER: &str = "berth-bot";
    /// Response metadata of `WatchEvents`: the event id the watch starts after.
    pub const EVENTS_AFTER_HEADER: &str = "berth-events-after";
}

/// Every Berth protocol's encoded `FileDescriptorSet`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth_descriptor.bin"));

/// The in-container agent's protocol.
pub mod agent {
    /// Version 1 of the agent protocol (`berth.agent.v1`).
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("berth.agent.v1");
    }

    /// The one message of the user cgroup handoff (not gRPC): berthd connects to the Unix socket the agent
    /// names with `--user-cgroup-from`, sends these bytes with the cgroup's `cgroup.procs` descriptors
    /// (SCM_RIGHTS) and reads `ok` or `error: …` back.
    pub const USER_CGROUP_HELLO: &[u8] = b"berth-user-cgroup/1\n";
    /// Most descriptors one handoff may carry (cgroup v1 uses one per hierarchy: memory and pids).
    pub const USER_CGROUP_MAX_FDS: usize = 4;
}

/// berthd's public API.
pub mod controlplane {
    /// Version 1 (`berth.controlplane.v1`).
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("berth.controlplane.v1");
    }
}
