//! Bot lifecycle. [`BotManager`] owns the rules: one operation per file (`create.rs`, `start.rs`,
//! `stop.rs`, `delete.rs`, `query.rs`), mutations of one bot serialised by a per-bot lock, different
//! bots in parallel, durable state written before a call returns, and an event for every transition.

pub mod agent_dir;
mod create;
mod data;
mod delete;
pub mod dns;
mod keys;
pub mod limits;
pub mod model;
pub mod ops;
mod orphans;
mod platform;
mod query;
pub mod reconcile;
mod recover;
mod rollback;
mod settle;
pub mod snapshot;
mod start;
mod stop;
pub mod task_logs;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::agent_client::{Agents, bot::Opener};
use crate::error::{Error, Result};
use crate::runtime::{ContainerRuntime, Image};
use crate::store::Store;
use model::{BotEvent, BotRecord, BotState};

/// The longest `last_error` (and state-change message) stored, in bytes: an error can quote the bot.
const LAST_ERROR_MAX: usize = 4096;

pub use create::{CreateBot, check_env};
pub use data::{ImportMode, Imported};

/// Settings of the lifecycle.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Host directory holding one subdirectory per bot (its agent socket and token), bind-mounted into the
    /// bot at [`AGENT_DIR`].
    pub run_dir: PathBuf,
    /// Image used when a create names none.
    pub default_image: String,
    /// How long `stop` waits after SIGTERM before SIGKILL, when the caller gives no timeout.
    pub stop_timeout: Duration,
    /// How long `start` waits for the agent to answer.
    pub agent_ready_timeout: Duration,
    /// Registries (HOST[:PORT]) spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// PEM certificates trusted for registries besides the public roots (private CAs).
    pub registry_cas: Vec<Vec<u8>>,
    /// Durable state of berthd: kept archives (`archives/`) and mount points for work on snapshots (`mnt/`).
    pub state_dir: PathBuf,
    /// Largest expanded size of an imported archive, in bytes.
    pub import_max_bytes: u64,
    /// Limits of a bot created without its own (`None` = unlimited).
    pub default_limits: crate::runtime::Limits,
    /// Name servers for the bots' resolv.conf; empty = the host's (see [`dns`]).
    pub dns_servers: Vec<std::net::IpAddr>,
    /// This node's name in a cluster: it creates bots as their owner and runs, supervises and changes only
    /// its own. `None` on a single node (every bot is its own).
    pub node: Option<String>,
    /// How long bot events are kept for WatchEvents to resume from.
    pub events_keep: Duration,
}

pub use agent_dir::AGENT_DIR;
pub use platform::Platform;

/// A connection to a bot's agent on platform `P`.
pub type AgentOf<P> = <<P as Platform>::Agents as Agents>::Agent;

/// The lifecycle of every bot.
pub struct BotManager<P: Platform> {
    runtime: P::Runtime,
    network: P::Network,
    /// How bots' agents are reached.
    agent_link: P::Agents,
    store: Store,
    config: ManagerConfig,
    images: Mutex<HashMap<String, Image>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    agents: Mutex<HashMap<String, AgentOf<P>>>,
    /// Bumped (under `agents`' lock) at every eviction: a connection made across one is not cached, as
    /// it may carry a token a start has just replaced.
    agents_gen: std::sync::atomic::AtomicU64,
    supervision: Mutex<HashMap<String, reconcile::Supervision>>,
    events: crate::events::Journal,
}

impl<P: Platform> std::fmt::Debug for BotManager<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BotManager").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<P: Platform> BotManager<P> {
    pub fn new(
        runtime: P::Runtime,
        network: P::Network,
        agent_link: P::Agents,
        store: Store,
        config: ManagerConfig,
    ) -> BotManager<P> {
        let events = crate::events::Journal::start(
            store.clone(),
            crate::events::Settings {
                spill: config.state_dir.join("events.spill"),
                node: config.node.clone().unwrap_or_default(),
                keep: config.events_keep,
            },
        );
        BotManager {
            runtime,
            network,
            agent_link,
            store,
            config,
            images: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            agents: Mutex::new(HashMap::new()),
            agents_gen: std::sync::atomic::AtomicU64::new(0),
            supervision: Mutex::new(HashMap::new()),
            events,
        }
    }

    /// Imports an image archive and makes it available to creates by its name.
    pub async fn import_image(&self, archive: &std::path::Path) -> Result<Image> {
        let image = self.runtime.import_image(archive).await?;
        lock(&self.images).insert(image.name.clone(), image.clone());
        tracing::info!(image = %image.name, chain_id = %image.chain_id, "image imported");
        Ok(image)
    }

    /// Pulls an image from a registry and makes it available to creates.
    pub async fn pull_image(
        &self,
        reference: &str,
        creds: Option<crate::runtime::registry::Credentials>,
    ) -> Result<Image> {
        let host = reference.split('/').next().unwrap_or("");
        let plain = self.config.insecure_registries.iter().any(|r| r == host);
        let source = crate::runtime::registry::fetch(reference, creds, plain, &self.config.registry_cas).await?;
        let image = self.runtime.install_image(&source).await?;
        lock(&self.images).insert(image.name.clone(), image.clone());
        tracing::info!(image = %image.name, "image pulled");
        Ok(image)
    }

    /// The images creates can use, by name.
    pub fn image_list(&self) -> Vec<Image> {
        let mut v: Vec<Image> = lock(&self.images).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The memory a bot asking `limits` reserves on its node: its limit, berthd's default, or nothing when
    /// unlimited (what placement in a cluster counts).
    pub fn reserved_memory(&self, limits: &limits::LimitsRequest) -> u64 {
        match limits.memory_bytes {
            limits::Ask::Set(v) => v,
            limits::Ask::Default => self.config.default_limits.memory_bytes.unwrap_or(0),
            limits::Ask::Unlimited => 0,
        }
    }

    /// Names of the images creates can use.
    pub fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.images).keys().cloned().collect();
        v.sort();
        v
    }

    /// Subscribes to lifecycle events: every node's, as stored, in order.
    pub fn subscribe(&self) -> broadcast::Receiver<BotEvent> {
        self.events.subscribe()
    }

    /// The event journal: watch from an id, flush before stopping.
    pub fn events(&self) -> &crate::events::Journal {
        &self.events
    }

    /// The per-bot lock serialising mutations of `name`.
    fn bot_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(name.to_string()).or_default().clone()
    }

    fn bot_dir(&self, name: &str) -> agent_dir::AgentDir {
        agent_dir::AgentDir::new(self.config.run_dir.join(name))
    }

    /// Records a state change durably, then announces it. The message may quote the bot (its agent's last
    /// words): what is stored is made safe to store and show.
    async fn transition(&self, bot: &BotRecord, state: BotState, kind: &str, message: &str) -> Result<()> {
        let message = &crate::text::shown(message, LAST_ERROR_MAX);
        let last_error = if state == BotState::Error { message } else { "" };
        self.store.set_state(&bot.name, state, last_error, kind == "restarted").await?;
        self.announce(&bot.name, state, kind, message);
        Ok(())
    }

    /// Queues an event (stored and broadcast off the caller's path).
    fn announce(&self, name: &str, state: BotState, kind: &str, message: &str) {
        self.events.announce(name, state, kind, message);
    }

    /// Announces an event of kind `kind` for every bot of cluster node `node` (its loss, its return), each
    /// in the state last recorded.
    pub async fn announce_node(&self, node: &str, kind: &str, message: &str) -> Result<u64> {
        let mut pages = self.store.node_bot_pages(Some(node));
        let mut n = 0;
        while let Some(page) = pages.next().await? {
            for b in page {
                self.announce(&b.name, b.state, kind, message);
                n += 1;
            }
        }
        Ok(n)
    }

    /// The bots this node owns (all of them on a single node), a page at a time: what start-up recovery,
    /// the reconciler, settlement, orphan checks and the metrics' counts work through.
    fn own_bots(&self) -> crate::store::BotPages<'_> {
        self.store.node_bot_pages(self.config.node.as_deref())
    }

    /// The bot, if this node owns it: a bot of another node is changed, run and reached only by that node
    /// (FAILED_PRECONDITION naming it; the API forwards such calls to the owner before they get here, so
    /// this refuses only a call that raced a change of owner).
    async fn own_bot(&self, name: &str) -> Result<BotRecord> {
        let bot = self.store.get_bot(name).await?;
        match &self.config.node {
            Some(me) if bot.node != *me => Err(Error::FailedPrecondition(format!(
                "bot `{name}` belongs to node `{}`, not to this one (`{me}`): call that node (berth node ls gives its \
                 address)",
                bot.node
            ))),
            _ => Ok(bot),
        }
    }

    /// A connection to the bot's agent (cached; evicted when the bot stops).
    pub async fn agent(&self, name: &str) -> Result<AgentOf<P>> {
        if let Some(c) = lock(&self.agents).get(name) {
            return Ok(c.clone());
        }
        let generation = self.agents_gen.load(std::sync::atomic::Ordering::SeqCst);
        let bot = self.own_bot(name).await?;
        if bot.state != BotState::Running {
            return Err(Error::FailedPrecondition(format!("bot `{name}` is {}, not running", bot.state.as_str())));
        }
        let c = self.connect_agent(&bot).await?;
        // A start may have replaced the token (and emptied the cache) while this connected: a connection
        // with the old token is used once, not cached for every later call.
        let mut agents = lock(&self.agents);
        if self.agents_gen.load(std::sync::atomic::Ordering::SeqCst) == generation {
            agents.insert(name.to_string(), c.clone());
        }
        Ok(c)
    }

    async fn connect_agent(&self, bot: &BotRecord) -> Result<AgentOf<P>> {
        let dir = self.bot_dir(&bot.name);
        let target = format!("bot `{}` ({})", bot.name, dir.sock_dir().join(agent_dir::AGENT_SOCKET).display());
        let open: Opener = std::sync::Arc::new(move || dir.open_socket(agent_dir::AGENT_SOCKET));
        self.agent_link.connect(target, open, &bot.token).await
    }

    fn evict_agent(&self, name: &str) {
        let mut agents = lock(&self.agents);
        agents.remove(name);
        self.agents_gen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A fresh agent token: 256 random bits (two v4 UUIDs' worth, from the OS's generator), hex.
pub(crate) fn new_token() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Runs `pass` every `every` (a pass that runs late delays the next tick) until `stop` turns true: the
/// reconciler's loop and the task-log guard's.
fn spawn_every<F, Fut>(
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut pass: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            pass().await;
        }
    })
}

/// Locks a std mutex, recovering from poisoning (the maps stay consistent under every panic point).
use crate::sync::lock;

#[cfg(test)]
pub(crate) mod tests;
