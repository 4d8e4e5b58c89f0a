//! `berth snapshot …`, `berth data export|import` and `berth ops ls`: a bot's data through berthd's
//! `DataService`, with a progress line on a terminal for transfers.

use std::io::{Read, Write};

use anyhow::Context;
use berth_proto::controlplane::v1 as pb;
use pb::data_service_client::DataServiceClient;

use crate::daemon::{Conn, status_err};
use crate::progress::Progress;

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a bot (a running bot is frozen only while its files are copied; its sessions live on).
    Create {
        bot: String,
        /// The snapshot's name (default: snap-YYYYMMDD-HHMMSS).
        #[arg(long)]
        name: Option<String>,
    },
    /// List a bot's snapshots.
    Ls {
        bot: String,
        #[arg(long)]
        json: bool,
    },
    /// Roll a bot back in place to a snapshot (a running bot restarts on it).
    Rollback { bot: String, snapshot: String },
    /// Delete a snapshot.
    Rm { bot: String, snapshot: String },
}

#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {
    /// Write a bot's /data as an archive (tar + zstd unless told otherwise) with a manifest of checksums.
    Export {
        bot: String,
        /// Output file (`-` = stdout).
        #[arg(short = 'o', long)]
        output: String,
        #[arg(long, value_enum, default_value = "zstd")]
        compression: Compressions,
    },
    /// Apply an archive to a bot's /data: merged by default, or replacing everything with --replace.
    Import {
        bot: String,
        /// Archive file (`-` = stdin).
        file: String,
        #[arg(long)]
        replace: bool,
        /// Merge an archive that has no manifest.json (nothing then shows it is complete).
        #[arg(long, conflicts_with = "replace")]
        unverified: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Compressions {
    Zstd,
    Gzip,
    None,
}

#[derive(Debug, clap::Subcommand)]
pub enum OpsCommand {
    /// List operations, newest first (of one bot if named).
    Ls {
        bot: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

async fn client(
    conn: &Conn,
) -> anyhow::Result<
    DataServiceClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            berth_control_plane::agent_client::BearerAuth,
        >,
    >,
> {
    Ok(DataServiceClient::with_interceptor(conn.channel().await?, conn.auth()?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

fn when(ms: i64) -> String {
    berth_control_plane::time::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64))
}

pub async fn snapshot(conn: &Conn, cmd: SnapshotCommand) -> anyhow::Result<i32> {
    let mut c = client(conn).await?;
    match cmd {
        SnapshotCommand::Create { bot, name } => {
            let r = c
                .create_snapshot(pb::CreateSnapshotRequest { bot, name: name.unwrap_or_default() })
                .await
                .map_err(status_err("snapshot"))?
                .into_inner();
            let s = r.snapshot.context("no snapshot in reply")?;
            println!("{} ({} bytes, operation {})", s.name, s.size_bytes, r.operation_id);
        }
        SnapshotCommand::Ls { bot, json } => {
            let snaps =
                c.list_snapshots(pb::ListSnapshotsRequest { bot }).await.map_err(status_err("list"))?.into_inner();
            if json {
                let v: Vec<_> = snaps
                    .snapshots
                    .iter()
                    .map(|s| serde_json::json!({"name": s.name, "parent": s.parent, "created_at_ms": s.created_at_ms, "size_bytes": s.size_bytes}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("{:<32} {:<21} {:>14} PARENT", "NAME", "CREATED", "SIZE");
                for s in &snaps.snapshots {
                    println!("{:<32} {:<21} {:>14} {}", s.name, when(s.created_at_ms), s.size_bytes, s.parent);
                }
            }
        }
        SnapshotCommand::Rollback { bot, snapshot } => {
            let r = c
                .rollback(pb::RollbackRequest { bot, snapshot: snapshot.clone() })
                .await
                .map_err(status_err("rollback"))?
                .into_inner();
            let b = r.bot.context("no bot in reply")?;
            println!("{} rolled back to {snapshot} (operation {})", b.name, r.operation_id);
        }
        SnapshotCommand::Rm { bot, snapshot } => {
            c.delete_snapshot(pb::DeleteSnapshotRequest { bot, name: snapshot.clone() })
                .await
                .map_err(status_err("delete"))?;
            println!("{snapshot} deleted");
        }
    }
    Ok(0)
}

pub async fn data(conn: &Conn, cmd: DataCommand) -> anyhow::Result<i32> {
    let mut c = client(conn).await?;
    match cmd {
        DataCommand::Export { bot, output, compression } => {
            let compression = match compression {
                Compressions::Zstd => pb::Compression::Zstd,
                Compressions::Gzip => pb::Compression::Gzip,
                Compressions::None => pb::Compression::None,
            } as i32;
            let mut stream = c
                .export_data(pb::ExportDataRequest { bot, compression })
                .await
                .map_err(status_err("export"))?
                .into_inner();
            // Written to a temporary file beside the output and renamed at the end: a failed export
            // leaves no truncated archive behind.
            let (mut out, tmp): (Box<dyn Write>, Option<tempfile::NamedTempFile>) = if output == "-" {
                (Box::new(std::io::stdout().lock()), None)
            } else {
                let dir = std::path::Path::new(&output)
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                let t = tempfile::NamedTempFile::new_in(dir)
                    .with_context(|| format!("cannot write in {}", dir.display()))?;
                (Box::new(t.reopen()?), Some(t))
            };
            let mut progress = Progress::new("export", None);
            let mut op = String::new();
            let mut summary = None;
            while let Some(chunk) = stream.message().await.map_err(status_err("export"))? {
                if !chunk.operation_id.is_empty() {
                    op = chunk.operation_id;
                }
                out.write_all(&chunk.data).context("cannot write the archive")?;
                progress.add(chunk.data.len() as u64);
                summary = summary.or(chunk.summary);
            }
            out.flush()?;
            drop(out);
            progress.finish();
            // The summary comes after the last byte: without it the archive may be cut short.
            let summary =
                summary.context("the export ended before berthd said it was complete; no archive was kept")?;
            if let Some(t) = tmp {
                t.as_file().sync_all()?;
                t.persist(&output).with_context(|| format!("cannot write {output}"))?;
                eprintln!(
                    "exported {} entries ({} bytes of files) in {} bytes to {output} (operation {op})",
                    summary.entries, summary.bytes, progress.done
                );
            }
            if !summary.skipped.is_empty() {
                eprintln!(
                    "skipped {} entries an archive cannot hold (listed in its manifest too):",
                    summary.skipped.len()
                );
                for s in &summary.skipped {
                    eprintln!("  {}", crate::shown(s));
                }
            }
        }
        DataCommand::Import { bot, file, replace, unverified } => {
            let (mut input, total): (Box<dyn Read + Send>, Option<u64>) = if file == "-" {
                (Box::new(std::io::stdin()), None)
            } else {
                let f = std::fs::File::open(&file).with_context(|| format!("cannot open {file}"))?;
                let len = f.metadata().ok().map(|m| m.len());
                (Box::new(f), len)
            };
            let (tx, rx) = tokio::sync::mpsc::channel::<pb::ImportDataChunk>(8);
            let first = pb::ImportDataChunk { bot: bot.clone(), replace, unverified, data: Vec::new() };
            tx.send(first).await.context("import stream")?;
            let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut progress = Progress::new("import", total);
                loop {
                    let mut buf = vec![0u8; 1 << 20];
                    let n = input.read(&mut buf).context("cannot read the archive")?;
                    if n == 0 {
                        progress.finish();
                        return Ok(());
                    }
                    buf.truncate(n);
                    progress.add(n as u64);
                    if tx.blocking_send(pb::ImportDataChunk { data: buf, ..Default::default() }).is_err() {
                        // berthd ended the call; its answer says why.
                        return Ok(());
                    }
                }
            });
            let r = c.import_data(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
            reader.await.context("reader")??;
            let r = r.map_err(status_err("import"))?.into_inner();
            let check = if r.verified { "verified against its manifest" } else { "no manifest: not verified" };
            println!("imported {} entries, {} bytes ({check}; operation {})", r.entries, r.bytes, r.operation_id);
            if !r.undo_snapshot.is_empty() {
                println!(
                    "the data as it was is kept as snapshot {0}; to undo: berth snapshot rollback {bot} {0}",
                    r.undo_snapshot
                );
            }
        }
    }
    Ok(0)
}

pub async fn ops(conn: &Conn, cmd: OpsCommand) -> anyhow::Result<i32> {
    let mut c = client(conn).await?;
    let OpsCommand::Ls { bot, limit, json } = cmd;
    let ops = c
        .list_operations(pb::ListOperationsRequest { bot: bot.unwrap_or_default(), limit })
        .await
        .map_err(status_err("list operations"))?
        .into_inner()
        .operations;
    if json {
        let v: Vec<_> = ops
            .iter()
            .map(|o| {
                serde_json::json!({"id": o.id, "bot": o.bot, "kind": o.kind, "state": o.state, "target": o.target,
                    "progress_done": o.progress_done, "progress_total": o.progress_total, "error": o.error,
                    "created_at_ms": o.created_at_ms, "updated_at_ms": o.updated_at_ms})
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(0);
    }
    println!(
        "{:<17} {:<16} {:<9} {:<10} {:<21} {:>12} TARGET / ERROR",
        "ID", "BOT", "KIND", "STATE", "STARTED", "DONE"
    );
    for o in &ops {
        let note = if o.error.is_empty() { &o.target } else { &o.error };
        println!(
            "{:<17} {:<16} {:<9} {:<10} {:<21} {:>12} {}",
            o.id,
            o.bot,
            o.kind,
            o.state,
            when(o.created_at_ms),
            o.progress_done,
            crate::shown(note)
        );
    }
    Ok(0)
}
