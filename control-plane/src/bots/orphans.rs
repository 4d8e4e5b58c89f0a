//! Orphan recovery: writable snapshots of ours found by label (whatever their name) that no container
//! runs on. A bot whose container is gone gets a new container on its newest such snapshot, so its data
//! comes back as it was. Any other orphan is backed up to an archive first and removed only once the
//! backup is on disk; if the backup fails the snapshot stays and the error is reported. A bot whose
//! container and data are both gone is put in `error` saying so, never quietly given empty data.

use std::collections::BTreeMap;

use super::BotManager;
use super::Platform;
use super::model::BotState;
use super::rollback::LABEL_DISCARD;
use crate::archive::Compression;
use crate::error::{Error, Result};
use crate::runtime::{ContainerRuntime, KIND_ACTIVE, LABEL_BOT, LABEL_KIND, RuntimeError, SnapshotInfo};

/// What orphan recovery did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrphanReport {
    /// Bots given a new container on their existing data.
    pub adopted: Vec<String>,
    /// Archives written from orphaned snapshots (which were then removed).
    pub backed_up: Vec<std::path::PathBuf>,
    /// Orphans kept because their backup failed, with why.
    pub kept: Vec<String>,
    /// Bots whose container and data are both missing.
    pub lost: Vec<String>,
}

impl<P: Platform> BotManager<P> {
    /// Finds and recovers orphaned data (see the module docs).
    pub async fn recover_orphans(&self) -> Result<OrphanReport> {
        let mut report = OrphanReport::default();
        let by_bot = self.active_snapshots_by_bot().await?;
        self.mark_lost_bots(&by_bot, &mut report).await?;
        for (name, snaps) in by_bot {
            self.settle_snapshots_of(name, snaps, &mut report).await?;
        }
        Ok(report)
    }

    /// The writable snapshots berthd made, by bot; those marked to discard are removed on the way.
    async fn active_snapshots_by_bot(&self) -> Result<BTreeMap<String, Vec<SnapshotInfo>>> {
        let mut by_bot: BTreeMap<String, Vec<SnapshotInfo>> = BTreeMap::new();
        for s in self.runtime.snapshots(LABEL_KIND, KIND_ACTIVE).await? {
            if s.labels.contains_key(LABEL_DISCARD) {
                if let Err(e) = self.runtime.remove_snapshot(&s.key).await {
                    tracing::warn!(snapshot = %s.key, error = %crate::error::chain(&e), "failed to remove a discarded snapshot");
                }
                continue;
            }
            if let Some(bot) = s.labels.get(LABEL_BOT) {
                by_bot.entry(bot.clone()).or_default().push(s);
            }
        }
        Ok(by_bot)
    }

    /// Bots that should have a container but have neither one nor a snapshot: containerd's state was
    /// lost. They go to `error`, saying so.
    async fn mark_lost_bots(
        &self,
        by_bot: &BTreeMap<String, Vec<SnapshotInfo>>,
        report: &mut OrphanReport,
    ) -> Result<()> {
        let mut pages = self.own_bots();
        while let Some(page) = pages.next().await? {
            for bot in &page {
                if !by_bot.contains_key(&bot.name) && matches!(bot.state, BotState::Running | BotState::Stopped) {
                    match self.runtime.container_snapshot(&bot.container_id).await {
                        Err(RuntimeError::NotFound { .. }) => {
                            let reason = "its container and its data are missing from containerd (was containerd's \
                                          state lost?); delete the bot, or restore it from a kept archive";
                            self.transition(bot, BotState::Error, "error", reason).await?;
                            report.lost.push(bot.name.clone());
                        }
                        Err(e) => return Err(e.into()),
                        Ok(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// One bot's writable snapshots: the newest adopted if its container is gone, every other one backed
    /// up and removed (kept, and reported, if its backup fails).
    async fn settle_snapshots_of(
        &self,
        name: String,
        mut snaps: Vec<SnapshotInfo>,
        report: &mut OrphanReport,
    ) -> Result<()> {
        snaps.sort_by_key(|s| std::cmp::Reverse(s.created_at_ms));
        let orphans = match self.store.get_bot(&name).await {
            Ok(bot) => match self.runtime.container_snapshot(&bot.container_id).await {
                Ok(current) => snaps.into_iter().filter(|s| s.key != current).collect(),
                Err(RuntimeError::NotFound { .. }) if bot.state == BotState::Creating => {
                    // Its create was interrupted before the container was made: there is no user data
                    // yet, and nothing to adopt. Say so; deleting the bot removes what was made.
                    let reason = "its create was interrupted before its container was made; delete the bot \
                                  and create it again";
                    self.transition(&bot, BotState::Error, "error", reason).await?;
                    return Ok(());
                }
                Err(RuntimeError::NotFound { .. }) => {
                    let newest = snaps.remove(0);
                    match self.adopt(&bot, &newest.key).await {
                        Ok(()) => report.adopted.push(name.clone()),
                        Err(e) => {
                            let why = format!(
                                "bot `{name}` could not be recreated on {}: {}",
                                newest.key,
                                crate::error::chain(&e)
                            );
                            tracing::error!(bot.name = %name, error = %why, "kept a lost bot's data as it is");
                            report.kept.push(why);
                            return Ok(());
                        }
                    }
                    snaps
                }
                Err(e) => return Err(e.into()),
            },
            Err(crate::store::StoreError::NotFound { .. }) => snaps,
            Err(e) => return Err(e.into()),
        };
        for s in orphans {
            match self.back_up_orphan(&name, &s.key).await {
                Ok(path) => {
                    self.runtime.remove_snapshot(&s.key).await?;
                    report.backed_up.push(path);
                }
                Err(e) => {
                    let why = format!("{} (bot `{name}`): backup failed: {}", s.key, crate::error::chain(&e));
                    tracing::error!(snapshot = %s.key, bot.name = %name, error = %why, "kept an orphaned snapshot");
                    report.kept.push(why);
                }
            }
        }
        Ok(())
    }

    /// Gives a bot whose container is gone a new one on its existing writable snapshot.
    async fn adopt(&self, bot: &super::model::BotRecord, key: &str) -> Result<()> {
        let image = super::lock(&self.images).get(&bot.image).cloned().ok_or_else(|| {
            Error::FailedPrecondition(format!(
                "bot `{}` lost its container, and its image `{}` is not imported; import it and restart berthd",
                bot.name, bot.image
            ))
        })?;
        let netns = bot.network.as_ref().map(|n| n.netns.clone()).ok_or_else(|| {
            Error::FailedPrecondition(format!("bot `{}` lost its container and has no network recorded", bot.name))
        })?;
        self.make_container(bot, &image, &netns, Some(key.to_string())).await?;
        self.transition(
            bot,
            BotState::Stopped,
            "recovered",
            &format!("its container was missing; recreated on its data ({key})"),
        )
        .await?;
        tracing::warn!(bot.name = %bot.name, snapshot = key, "recreated a lost container on the bot's existing data");
        Ok(())
    }

    /// Writes an orphaned writable snapshot's `/data` to `<archives>/<bot>.tar.zst` (or, if that exists,
    /// a name with the snapshot's key), atomically.
    async fn back_up_orphan(&self, bot: &str, key: &str) -> Result<std::path::PathBuf> {
        let dir = self.archive_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("cannot create {}", dir.display()), e))?;
        let mut path = self.kept_archive(bot);
        if path.exists() {
            path = dir.join(format!("{bot}.orphan-{key}.tar.zst"));
        }
        let partial = path.with_extension("zst.partial");
        let op =
            self.begin_op(bot, "backup", &path.display().to_string(), serde_json::json!({ "orphan": key })).await?;
        let result = async {
            let file = std::fs::File::create(&partial)
                .map_err(|e| Error::internal(format!("cannot create {}", partial.display()), e))?;
            let name = bot.to_string();
            self.with_mounted(key, true, &op, move |root, progress| {
                let mut file = file;
                let s = crate::archive::write::write_archive(
                    &root.join("data"),
                    &name,
                    Compression::Zstd,
                    &mut file,
                    progress,
                )?;
                file.sync_all().map_err(crate::archive::io("flush the backup"))?;
                Ok(s)
            })
            .await?;
            std::fs::rename(&partial, &path)
                .map_err(|e| Error::internal(format!("cannot move to {}", path.display()), e))?;
            Ok(path.clone())
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        self.end_op(&op, &path.display().to_string(), result).await
    }
}
