//! Creating a bot: validate, record it (state `creating`), create its container with the agent as PID 1
//! and its agent directory bind-mounted, then `stopped` (or start it). A failure before `stopped`
//! removes everything, the record included, and returns the reason: nothing is left half-made. In a
//! cluster, an image this node lacks is pulled here first (another node may have pulled it).

use std::collections::BTreeMap;

use super::Platform;
use super::model::{BotRecord, BotState, now_ms, validate_name};
use super::start::Fresh;
use super::{BotManager, lock};
use crate::error::{Error, Result};
use crate::network::Network;
use crate::runtime::{ContainerConfig, ContainerRuntime};

/// A create request.
#[derive(Debug, Clone, Default)]
pub struct CreateBot {
    pub name: String,
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Resolved against berthd's defaults (see [`super::limits`]).
    pub limits: super::limits::LimitsRequest,
    pub start: bool,
    /// Restore the data kept when a bot of this name was deleted with `keep_data`.
    pub restore: bool,
    /// Where it may connect beyond the host.
    pub egress: crate::network::Egress,
}

impl<P: Platform> BotManager<P> {
    #[tracing::instrument(skip_all, fields(bot.name = %req.name))]
    pub async fn create(&self, req: CreateBot) -> Result<BotRecord> {
        validate_name(&req.name).map_err(Error::InvalidArgument)?;
        for (k, v) in &req.env {
            check_env(k, v).map_err(Error::InvalidArgument)?;
        }
        let limits = super::limits::resolve(req.limits, self.config.default_limits, super::limits::Host::probe())?;
        let image_name = if req.image.is_empty() { self.config.default_image.clone() } else { req.image.clone() };
        let found = lock(&self.images).get(&image_name).cloned();
        let image = match (found, &self.config.node) {
            (Some(image), _) => image,
            // In a cluster the bot's node may not have the image another node pulled: it pulls it itself.
            (None, Some(node)) => self.pull_image(&image_name, None).await.map_err(|e| {
                Error::NotFound(format!(
                    "image `{image_name}` is not on node `{node}` (available: {}) and pulling it there failed: {}",
                    self.images().join(", "),
                    crate::error::chain(&e)
                ))
            })?,
            (None, None) => {
                return Err(Error::NotFound(format!(
                    "image `{image_name}` is not imported (available: {})",
                    self.images().join(", ")
                )));
            }
        };
        let kept = self.kept_archive(&req.name);
        if req.restore && !kept.exists() {
            return Err(Error::NotFound(format!(
                "there is no kept data for bot `{}` (looked for {}); create it without restore, or delete a bot \
                 with keep_data first",
                req.name,
                kept.display()
            )));
        }
        let bot_lock = self.bot_lock(&req.name);
        let _guard = bot_lock.lock().await;
        let now = now_ms();
        let bot = BotRecord {
            name: req.name.clone(),
            container_id: format!("bot-{}", req.name),
            image: image_name,
            state: BotState::Creating,
            env: req.env.clone(),
            labels: req.labels.clone(),
            limits,
            token: super::new_token(),
            last_error: String::new(),
            restart_count: 0,
            desired_running: req.start,
            last_exit: String::new(),
            created_at_ms: now,
            updated_at_ms: now,
            network: None,
            egress: req.egress.clone(),
            node: self.config.node.clone().unwrap_or_default(),
        };
        self.store.insert_bot(&bot).await?;
        self.announce(&bot.name, BotState::Creating, "creating", "");
        if let Err(e) = self.make_parts(&bot, &image, &req, &kept).await {
            self.undo_create(&bot, &e).await;
            return Err(e);
        }
        self.transition(&bot, BotState::Stopped, "created", "").await?;
        if req.start {
            // Still under the lock taken above: nothing can have started it or seen its token since.
            self.start_locked(&bot, Fresh::Yes).await?;
        }
        Ok(self.store.get_bot(&bot.name).await?)
    }

    /// Makes what a recorded bot needs: its network and container (at once: neither depends on the
    /// other; the container only records where its namespace will be), its egress rules and, with
    /// `restore`, its kept data. On failure the caller undoes whatever exists.
    async fn make_parts(
        &self,
        bot: &BotRecord,
        image: &crate::runtime::Image,
        req: &CreateBot,
        kept: &std::path::Path,
    ) -> Result<()> {
        let netns = self.network.netns_path(&bot.name);
        let (attached, made) =
            tokio::join!(self.network.attach(&bot.name), self.make_container(bot, image, &netns, None));
        // Recorded before anything else can fail, so the undo finds what to detach.
        if let Ok(a) = &attached {
            self.store.set_network(&bot.name, Some(a)).await?;
        }
        attached.map_err(|e| Error::Unavailable(format!("network setup failed: {}", crate::error::chain(&e))))?;
        made?;
        // A restricted bot never runs a moment without its policy (an unrestricted one is covered by the
        // chains' default, so its create costs no firewall round).
        if req.egress != crate::network::Egress::AllowAll {
            self.ensure_network_rules().await?;
        }
        if req.restore {
            let op = self.begin_op(&bot.name, "restore", &kept.display().to_string(), serde_json::json!({})).await?;
            let restored = async {
                let file = std::fs::File::open(kept)
                    .map_err(|e| Error::internal(format!("cannot open {}", kept.display()), e))?;
                self.import_locked(bot, file, true, false, &op).await
            }
            .await;
            self.end_op(&op, &kept.display().to_string(), restored).await?;
        }
        Ok(())
    }

    /// Undoes a create that failed: removes its container, snapshots, network, agent directory and
    /// record, so a failed create leaves nothing for the reconciler to chase and the name is free again
    /// (a container that containerd makes after all, late, is an orphan and removed as one). What cannot
    /// be removed keeps the record, in `error`, not wanted running, for `bot rm` to finish.
    async fn undo_create(&self, bot: &BotRecord, cause: &Error) {
        let undone = async {
            self.runtime.delete(&bot.container_id).await?;
            self.remove_all_snapshots(&bot.name).await?;
            let network = self.store.get_bot(&bot.name).await?.network;
            self.network
                .detach(&bot.name, network.as_ref())
                .await
                .map_err(|e| Error::Unavailable(format!("removing its network: {}", crate::error::chain(&e))))?;
            self.remove_bot_dir(&bot.name).await?;
            self.store.delete_bot(&bot.name).await?;
            Ok::<_, Error>(())
        }
        .await;
        let cause = crate::error::chain(cause);
        match undone {
            Ok(()) => {
                tracing::warn!(bot.name = %bot.name, error = %cause, "create failed; removed what it made");
                self.announce(&bot.name, BotState::Deleting, "deleted", &format!("create failed: {cause}"));
            }
            Err(u) => {
                let reason = format!(
                    "create failed: {cause}; removing what it made also failed: {}; `berth bot rm {}` finishes it",
                    crate::error::chain(&u),
                    bot.name
                );
                tracing::error!(bot.name = %bot.name, error = %reason, "a failed create left parts behind");
                if let Err(e) = self.store.set_desired(&bot.name, false).await {
                    tracing::warn!(bot.name = %bot.name, error = %e, "failed to record the bot as not wanted running");
                }
                if let Err(e) = self.transition(bot, BotState::Error, "error", &reason).await {
                    tracing::warn!(bot.name = %bot.name, error = %crate::error::chain(&e), "failed to record a failed create");
                }
            }
        }
    }

    /// Creates the bot's container (on `snapshot` if given, else on a new snapshot of `image`).
    pub(super) async fn make_container(
        &self,
        bot: &BotRecord,
        image: &crate::runtime::Image,
        netns: &std::path::Path,
        snapshot: Option<String>,
    ) -> Result<()> {
        let dir = self.bot_dir(&bot.name);
        let io = |what: &str, e: std::io::Error| Error::internal(format!("cannot {what} for bot `{}`", bot.name), e);
        dir.prepare().map_err(|e| io("create the agent directory", e))?;
        dir.write_token(&bot.token).map_err(|e| io("write the agent token", e))?;
        let mut mounts = dir.mounts();
        let (resolv, resolver) = super::dns::write(&self.config.run_dir, &self.config.dns_servers)
            .map_err(|e| io("write the bots' resolv.conf", e))?;
        if resolver.servers.is_empty() {
            tracing::warn!(bot.name = %bot.name, "bots get no name server: the host has only loopback ones; set dns_servers");
        }
        mounts.push(crate::runtime::BindMount {
            source: resolv,
            destination: super::dns::IN_BOT.into(),
            readonly: true,
        });
        let config = ContainerConfig {
            id: bot.container_id.clone(),
            image: image.clone(),
            args: super::agent_dir::AgentDir::agent_args(),
            env: bot.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            mounts,
            limits: bot.limits,
            netns: Some(netns.to_path_buf()),
            hostname: bot.name.clone(),
            labels: [(crate::runtime::LABEL_BOT.to_string(), bot.name.clone())].into(),
            snapshot,
            user_cgroup: true,
        };
        match self.runtime.create(&config).await {
            // A container left by an earlier, interrupted create of the same bot: replace it.
            Err(crate::runtime::RuntimeError::AlreadyExists { .. }) => {
                self.runtime.delete(&bot.container_id).await?;
                self.runtime.create(&config).await?;
            }
            r => r?,
        }
        Ok(())
    }
}

/// Checks an environment variable for a bot's processes (the agent applies the same rule).
pub use berth_agent_input::env::check as check_env;
