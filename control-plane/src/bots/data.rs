//! A bot's `/data` in and out as archives: export (streamed from a consistent snapshot, never from live
//! files), import (into a staging snapshot, verified, then switched to, so a refused or broken archive
//! changes nothing), and the two uses by the lifecycle: keep the data when a bot is deleted, restore it
//! when a bot of the same name is created. All host-side file work happens on snapshots mounted by
//! berthd under `<state>/mnt/`, which no container uses at the time.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::BotManager;
use super::Platform;
use super::model::BotRecord;
use super::ops::Operation;
use super::start::Fresh;
use crate::archive::{self, ArchiveError, Compression, Summary};
use crate::error::{Error, Result};
use crate::runtime::{ContainerRuntime, KIND_SNAPSHOT, TaskState};

impl From<ArchiveError> for Error {
    fn from(e: ArchiveError) -> Error {
        match e {
            e @ (ArchiveError::Hostile { .. } | ArchiveError::TooLarge { .. } | ArchiveError::Corrupt(_)) => {
                Error::InvalidArgument(e.to_string())
            }
            e @ ArchiveError::Io { .. } => Error::internal("archive I/O failed", e),
        }
    }
}

impl<P: Platform> BotManager<P> {
    /// Where kept data of deleted bots lives.
    pub fn archive_dir(&self) -> PathBuf {
        self.config.state_dir.join("archives")
    }

    /// The archive `bot rm --keep-data` keeps for bot `name`.
    pub fn kept_archive(&self, name: &str) -> PathBuf {
        self.archive_dir().join(format!("{name}.tar.zst"))
    }

    /// Streams an archive of the bot's `/data` into `out`. `started` learns the operation id first.
    #[tracing::instrument(skip_all, fields(bot.name = %name))]
    pub async fn export_data<W: Write + Send + 'static>(
        &self,
        name: &str,
        compression: Compression,
        out: W,
        started: impl FnOnce(&str),
    ) -> Result<Summary> {
        let bot_lock = self.bot_lock(name);
        let _guard = bot_lock.lock().await;
        let bot = self.data_bot(name).await?;
        let op = self.begin_op(name, "export", "", serde_json::json!({})).await?;
        started(&op.id);
        let result = self.export_locked(&bot, compression, out, &op).await;
        self.end_op(&op, "", result).await
    }

    /// Exports with the bot lock held: from a fresh temporary snapshot of a running bot (frozen only for
    /// the copy), or straight from a stopped bot's writable snapshot mounted read-only.
    pub(super) async fn export_locked<W: Write + Send + 'static>(
        &self,
        bot: &BotRecord,
        compression: Compression,
        out: W,
        op: &Operation,
    ) -> Result<Summary> {
        let active = self.runtime.container_snapshot(&bot.container_id).await?;
        let running = matches!(self.runtime.state(&bot.container_id).await?, TaskState::Running { .. });
        let temp = if running {
            let key = super::keys::export(&bot.name, &op.id);
            let labels = super::snapshot::hidden_labels(&bot.name, KIND_SNAPSHOT, &op.id);
            self.runtime.capture_snapshot(&active, Some(&bot.container_id), &key, labels).await?;
            Some(key)
        } else {
            None
        };
        let key = temp.clone().unwrap_or(active);
        let result = self
            .with_mounted(&key, true, op, {
                let bot = bot.name.clone();
                move |root, progress| {
                    archive::write::write_archive(&root.join("data"), &bot, compression, out, progress)
                }
            })
            .await;
        if let Some(t) = temp
            && let Err(e) = self.runtime.remove_snapshot(&t).await
        {
            tracing::warn!(bot.name = %bot.name, snapshot = %t, error = %crate::error::chain(&e), "failed to remove an export's snapshot");
        }
        result
    }

    /// Mounts snapshot `key` under `<state>/mnt/<op>`, runs `work` on a blocking thread with the mount
    /// root and a progress counter (recorded on the operation every second), then unmounts.
    pub(super) async fn with_mounted<T: Send + 'static>(
        &self,
        key: &str,
        readonly: bool,
        op: &Operation,
        work: impl FnOnce(PathBuf, &mut dyn FnMut(u64)) -> std::result::Result<T, ArchiveError> + Send + 'static,
    ) -> Result<T> {
        let dir = self.config.state_dir.join("mnt").join(&op.id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("cannot create {}", dir.display()), e))?;
        let mounted = self.runtime.mount_snapshot(key, &dir, readonly).await;
        let mounted = match mounted {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(e.into());
            }
        };
        let done = Arc::new(AtomicU64::new(0));
        let counter = done.clone();
        let root = dir.clone();
        let mut job = tokio::task::spawn_blocking(move || {
            let mut progress = |n: u64| {
                counter.fetch_add(n, Ordering::Relaxed);
            };
            let r = work(root, &mut progress);
            (r, mounted)
        });
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let joined = loop {
            tokio::select! {
                j = &mut job => break j,
                _ = tick.tick() => {
                    if let Err(e) = self.store.op_progress(&op.id, done.load(Ordering::Relaxed), 0).await {
                        tracing::warn!(op.id = %op.id, error = %crate::error::chain(&e), "failed to record progress");
                    }
                }
            }
        };
        let (result, mounted) =
            joined.map_err(|e| Error::internal("an archive worker failed", std::io::Error::other(e)))?;
        let unmounted = tokio::task::spawn_blocking(move || mounted.unmount())
            .await
            .map_err(|e| Error::internal("an unmount worker failed", std::io::Error::other(e)))?;
        if let Err(e) = self.store.op_progress(&op.id, done.load(Ordering::Relaxed), done.load(Ordering::Relaxed)).await
        {
            tracing::warn!(op.id = %op.id, error = %crate::error::chain(&e), "failed to record progress");
        }
        let value = result?;
        unmounted.map_err(|e| Error::internal("cannot unmount a snapshot", e))?;
        let _ = std::fs::remove_dir(&dir);
        Ok(value)
    }

    /// Imports an archive into the bot's `/data`, merging or replacing (see the module docs). The archive
    /// is first received into a spool file and checked in full (paths, links, types, size, manifest), so a
    /// refused archive never touches the bot. Then a running bot is stopped (so no write of its can be
    /// lost), the archive applied, and the bot started again, whatever happened; the data as it was before
    /// is kept as snapshot `pre-import-…`, so an import can be undone.
    ///
    /// An archive without a manifest cannot be told from a cut-off one (an export's manifest comes last),
    /// so it is refused before the bot is touched: always for a replace, and for a merge unless
    /// `unverified` says the caller accepts it.
    #[tracing::instrument(skip_all, fields(bot.name = %name, replace = tracing::field::Empty, unverified = tracing::field::Empty))]
    pub async fn import_data<Rd: Read + Send + 'static>(
        &self,
        name: &str,
        input: Rd,
        mode: ImportMode,
        started: impl FnOnce(&str),
    ) -> Result<Imported> {
        let replace = mode.replace;
        tracing::Span::current().record("replace", replace).record("unverified", mode.unverified);
        let bot_lock = self.bot_lock(name);
        let _guard = bot_lock.lock().await;
        let bot = self.data_bot(name).await?;
        let kind = if replace { "replace" } else { "merge" };
        let op = self.begin_op(name, "import", kind, serde_json::json!({})).await?;
        started(&op.id);
        let spool = self.config.state_dir.join("spool").join(&op.id);
        let result = async {
            self.receive(input, &spool).await?;
            let checked = self.check_archive(&spool).await?;
            refuse_unverified(&checked, mode)?;
            let running = matches!(self.runtime.state(&bot.container_id).await?, TaskState::Running { .. });
            if running {
                self.stop_locked(&bot, None).await?;
            }
            let stopped = self.store.get_bot(name).await?;
            let file = std::fs::File::open(&spool).map_err(|e| Error::internal("cannot reopen the spooled archive", e))?;
            let applied = self.import_locked(&stopped, file, replace, true, &op).await.map(|summary| Imported {
                summary,
                undo_snapshot: Some(super::snapshot::pre_import_name(&op.id)),
            });
            if running {
                let bot = self.store.get_bot(name).await?;
                if let Err(e) = self.start_locked(&bot, Fresh::No).await {
                    tracing::warn!(bot.name = name, error = %crate::error::chain(&e), "failed to restart the bot after an import");
                    return applied.and(Err(e));
                }
            }
            applied
        }
        .await;
        let _ = std::fs::remove_file(&spool);
        self.end_op(&op, kind, result).await
    }

    /// Copies the incoming archive to `spool`, up to the import limit.
    async fn receive<Rd: Read + Send + 'static>(&self, mut input: Rd, spool: &std::path::Path) -> Result<()> {
        if let Some(dir) = spool.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::internal(format!("cannot create {}", dir.display()), e))?;
        }
        let limit = self.config.import_max_bytes;
        let path = spool.to_path_buf();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let mut file =
                std::fs::File::create(&path).map_err(|e| Error::internal("cannot create the spool file", e))?;
            let n = std::io::copy(&mut (&mut input).take(limit + 1), &mut file)
                .map_err(|e| Error::Unavailable(format!("receiving the archive failed: {e}")))?;
            if n > limit {
                return Err(ArchiveError::TooLarge { limit }.into());
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::internal("a receive worker failed", std::io::Error::other(e)))?
    }

    /// Checks a spooled archive without applying it.
    async fn check_archive(&self, spool: &std::path::Path) -> Result<Summary> {
        let opts = archive::extract::Options { max_bytes: self.config.import_max_bytes, replace: false };
        let path = spool.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(archive::io("open the spooled archive"))?;
            archive::extract::extract(file, None, opts, &mut |_| {})
        })
        .await
        .map_err(|e| Error::internal("a check worker failed", std::io::Error::other(e)))?
        .map_err(Error::from)
    }

    /// Applies an archive to a stopped bot with its lock held. With `undo_point`, the current data is
    /// first kept as a snapshot (removed again if the import fails, since nothing changed).
    pub(super) async fn import_locked<Rd: Read + Send + 'static>(
        &self,
        bot: &BotRecord,
        input: Rd,
        replace: bool,
        undo_point: bool,
        op: &Operation,
    ) -> Result<Summary> {
        let base = if undo_point {
            self.capture(bot, &super::snapshot::pre_import_name(&op.id), &op.id).await?;
            Some(super::keys::snapshot(&bot.name, &op.id))
        } else {
            None
        };
        let parent = match &base {
            Some(k) => k.clone(),
            None => {
                let active = self.runtime.container_snapshot(&bot.container_id).await?;
                self.runtime.snapshot(&active).await?.parent
            }
        };
        // Without an undo point the staging snapshot starts from the image: only a new bot's (empty)
        // data is replaced that way, so restores always replace.
        let new = self.prepare_active(bot, &parent, op).await?;
        let opts =
            archive::extract::Options { max_bytes: self.config.import_max_bytes, replace: replace || base.is_none() };
        let extracted = self
            .with_mounted(&new, false, op, move |root, progress| {
                archive::extract::extract(input, Some(&root), opts, progress)
            })
            .await;
        let applied = match extracted {
            Ok(summary) => self.switch_active(bot, &new, op).await.map(|()| summary),
            Err(e) => {
                if let Err(r) = self.runtime.remove_snapshot(&new).await {
                    tracing::warn!(bot.name = %bot.name, error = %crate::error::chain(&r), "failed to remove an import's staging snapshot");
                }
                Err(e)
            }
        };
        if applied.is_err()
            && let Some(b) = &base
            && let Err(r) = self.runtime.remove_snapshot(b).await
        {
            tracing::warn!(bot.name = %bot.name, error = %crate::error::chain(&r), "failed to remove an unneeded undo snapshot");
        }
        applied
    }

    /// Writes the bot's data to its kept archive (atomically: a complete file or none). Lock held.
    pub(super) async fn keep_data(&self, bot: &BotRecord) -> Result<PathBuf> {
        let dir = self.archive_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::internal(format!("cannot create {}", dir.display()), e))?;
        let path = self.kept_archive(&bot.name);
        let partial = path.with_extension("zst.partial");
        let op = self.begin_op(&bot.name, "backup", &path.display().to_string(), serde_json::json!({})).await?;
        let result = async {
            let file = std::fs::File::create(&partial)
                .map_err(|e| Error::internal(format!("cannot create {}", partial.display()), e))?;
            let writer = SyncOnDrop(Some(file));
            self.export_locked(bot, Compression::Zstd, writer, &op).await?;
            std::fs::rename(&partial, &path)
                .map_err(|e| Error::internal(format!("cannot move the archive to {}", path.display()), e))?;
            if let Ok(d) = std::fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(path.clone())
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        self.end_op(&op, &path.display().to_string(), result).await
    }
}

/// A file flushed to disk when the archive writer is done with it.
struct SyncOnDrop(Option<std::fs::File>);

impl Write for SyncOnDrop {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(f) => f.write(b),
            None => Err(std::io::Error::other("closed")),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Some(f) => {
                f.flush()?;
                f.sync_all()
            }
            None => Ok(()),
        }
    }
}

impl Drop for SyncOnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take()
            && let Err(e) = f.sync_all()
        {
            tracing::warn!(error = %e, "failed to flush an archive to disk");
        }
    }
}

/// How an import applies its archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportMode {
    /// Empty `/data` first (otherwise merge).
    pub replace: bool,
    /// Accept an archive without a manifest (merge only).
    pub unverified: bool,
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct Imported {
    pub summary: Summary,
    /// The snapshot holding `/data` as it was before: rolling back to it undoes the import.
    pub undo_snapshot: Option<String>,
}

/// Refuses a checked archive that has no manifest, unless `mode` accepts that (see
/// [`BotManager::import_data`]).
fn refuse_unverified(checked: &Summary, mode: ImportMode) -> Result<()> {
    if checked.verified {
        return Ok(());
    }
    let what = format!(
        "the archive has no manifest.json ({} entries), so nothing shows it is complete: an export cut short looks \
         like this",
        checked.entries
    );
    if mode.replace {
        return Err(Error::FailedPrecondition(format!(
            "{what}; a replace-import needs a verified archive (from `berth data export`); nothing was changed"
        )));
    }
    if !mode.unverified {
        return Err(Error::FailedPrecondition(format!(
            "{what}; to merge it anyway, import with --unverified (API: `unverified`); nothing was changed"
        )));
    }
    Ok(())
}
