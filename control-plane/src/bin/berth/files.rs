//! `berth agent cp | ls | stat`: file commands. Copies are verified end to end with sha256 and land
//! atomically on both sides.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use berth_control_plane::agent_client::AgentClient;
use berth_proto::agent::v1 as pb;
use pb::upload_request::Frame as Up;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Upload chunk size.
const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// Source: a local path, `-` for stdin, or `:PATH` in the bot.
    src: String,
    /// Destination: a local path, `-` for stdout, or `:PATH` in the bot.
    dst: String,
    /// Permission bits for a file created in the bot (octal).
    #[arg(long, value_parser = parse_octal)]
    mode: Option<u32>,
    /// Create missing parent directories in the bot.
    #[arg(short = 'p', long)]
    parents: bool,
}

impl CpArgs {
    /// A copy with default options (used by `berth cp` through berthd).
    pub fn new(src: String, dst: String, parents: bool) -> CpArgs {
        CpArgs { src, dst, mode: None, parents }
    }
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("`{s}` is not an octal mode: {e}"))
}

pub async fn cp(client: AgentClient, a: CpArgs) -> anyhow::Result<()> {
    match (a.src.strip_prefix(':'), a.dst.strip_prefix(':')) {
        (None, Some(remote)) => upload(client, &a.src, remote, a.mode.unwrap_or(0), a.parents).await,
        (Some(remote), None) => download(client, remote, &a.dst).await,
        _ => bail!("exactly one side of cp must be in the bot (written `:PATH`)"),
    }
}

async fn upload(mut client: AgentClient, local: &str, remote: &str, mode: u32, parents: bool) -> anyhow::Result<()> {
    let (mut reader, total): (Box<dyn tokio::io::AsyncRead + Unpin + Send>, Option<u64>) = if local == "-" {
        (Box::new(tokio::io::stdin()), None)
    } else {
        let f = tokio::fs::File::open(local).await.with_context(|| format!("cannot open `{local}`"))?;
        let len = f.metadata().await.ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let mut progress = crate::progress::Progress::new("upload", total);
    let (tx, rx) = mpsc::channel(4);
    let open = pb::UploadOpen { path: remote.to_string(), mode, create_parents: parents, no_overwrite: false };
    tx.send(pb::UploadRequest { frame: Some(Up::Open(open)) }).await?;
    let call = tokio::spawn(async move { client.upload(ReceiverStream::new(rx)).await });
    let mut hasher = Sha256::new();
    loop {
        let mut buf = vec![0u8; CHUNK_BYTES];
        let n = read_full(&mut reader, &mut buf).await.with_context(|| format!("cannot read `{local}`"))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        hasher.update(&buf);
        progress.add(n as u64);
        if tx.send(pb::UploadRequest { frame: Some(Up::Data(buf)) }).await.is_err() {
            break; // the call failed; its status says why
        }
    }
    progress.finish();
    let expected_sha256 = hex::encode(hasher.finalize());
    let _ = tx.send(pb::UploadRequest { frame: Some(Up::Commit(pb::UploadCommit { expected_sha256 })) }).await;
    drop(tx);
    let resp = call.await?.map_err(|s| anyhow::anyhow!("upload to `{remote}` failed: {}", s.message()))?;
    eprintln!("{} bytes, sha256 {}", resp.get_ref().bytes_written, crate::one_line(&resp.get_ref().sha256));
    Ok(())
}

async fn read_full(r: &mut (impl tokio::io::AsyncRead + Unpin), buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

async fn download(mut client: AgentClient, remote: &str, local: &str) -> anyhow::Result<()> {
    let req = pb::DownloadRequest { path: remote.to_string(), ..Default::default() };
    let mut stream = client
        .download(req)
        .await
        .map_err(|s| anyhow::anyhow!("download of `{remote}` failed: {}", s.message()))?
        .into_inner();
    let mut sink = LocalSink::create(local)?;
    let mut hasher = Sha256::new();
    let mut progress: Option<crate::progress::Progress> = None;
    loop {
        let chunk = stream
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("download of `{remote}` failed: {}", s.message()))?
            .ok_or_else(|| anyhow::anyhow!("download of `{remote}` ended early"))?;
        hasher.update(&chunk.data);
        sink.write(&chunk.data)?;
        progress
            .get_or_insert_with(|| crate::progress::Progress::new("download", Some(chunk.file_size_bytes)))
            .add(chunk.data.len() as u64);
        if chunk.eof {
            if let Some(p) = &progress {
                p.finish();
            }
            let got = hex::encode(hasher.finalize());
            if got != chunk.sha256 {
                bail!("download of `{remote}` is corrupt: sha256 {got}, agent sent {}", chunk.sha256);
            }
            return sink.finish();
        }
    }
}

/// A local destination that appears only when complete (temp file + rename), or stdout.
enum LocalSink {
    Stdout(std::io::Stdout),
    File { tmp: tempfile::NamedTempFile, dst: PathBuf },
}

impl LocalSink {
    fn create(local: &str) -> anyhow::Result<LocalSink> {
        if local == "-" {
            return Ok(LocalSink::Stdout(std::io::stdout()));
        }
        let dst = PathBuf::from(local);
        let dir = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp =
            tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write into `{}`", dir.display()))?;
        Ok(LocalSink::File { tmp, dst })
    }

    fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        match self {
            LocalSink::Stdout(s) => s.write_all(data)?,
            LocalSink::File { tmp, .. } => tmp.write_all(data)?,
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            LocalSink::Stdout(mut s) => s.flush()?,
            LocalSink::File { tmp, dst } => {
                tmp.as_file().sync_all()?;
                tmp.persist(&dst).with_context(|| format!("cannot move the download into `{}`", dst.display()))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Directory in the bot (default: its data directory).
    #[arg(default_value = "")]
    path: String,
    /// Recurse into subdirectories.
    #[arg(short = 'r', long)]
    recursive: bool,
}

impl LsArgs {
    pub fn new(path: String, recursive: bool) -> LsArgs {
        LsArgs { path, recursive }
    }
}

impl StatArgs {
    pub fn new(path: String, follow: bool) -> StatArgs {
        StatArgs { path, follow }
    }
}

pub async fn ls(mut client: AgentClient, a: LsArgs) -> anyhow::Result<()> {
    let mut page_token = String::new();
    loop {
        let req = pb::ListDirRequest { path: a.path.clone(), recursive: a.recursive, page_token, ..Default::default() };
        let page = client.list_dir(req).await.map_err(|s| anyhow::anyhow!("ls failed: {}", s.message()))?.into_inner();
        for e in &page.entries {
            println!("{}", describe(e));
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

#[derive(Debug, clap::Args)]
pub struct StatArgs {
    path: String,
    /// Describe a symlink's target instead of the link.
    #[arg(short = 'L', long)]
    follow: bool,
}

pub async fn stat(mut client: AgentClient, a: StatArgs) -> anyhow::Result<()> {
    let req = pb::StatRequest { path: a.path.clone(), follow_symlinks: a.follow };
    let info = client
        .stat(req)
        .await
        .map_err(|s| anyhow::anyhow!("stat failed: {}", s.message()))?
        .into_inner()
        .info
        .ok_or_else(|| anyhow::anyhow!("the agent sent no file info"))?;
    println!("path: {}", crate::one_line(&info.path));
    println!("type: {}", type_name(info.r#type));
    println!("size_bytes: {}", info.size_bytes);
    println!("mode: {:04o}", info.mode);
    println!("uid: {}", info.uid);
    println!("gid: {}", info.gid);
    println!("mtime_ns: {}", info.mtime_ns);
    println!("nlink: {}", info.nlink);
    println!("inode: {}", info.inode);
    if !info.symlink_target.is_empty() {
        println!("symlink_target: {}", crate::one_line(&info.symlink_target));
    }
    Ok(())
}

fn type_name(t: i32) -> &'static str {
    match pb::FileType::try_from(t) {
        Ok(pb::FileType::File) => "file",
        Ok(pb::FileType::Directory) => "directory",
        Ok(pb::FileType::Symlink) => "symlink",
        _ => "other",
    }
}

fn describe(e: &pb::FileInfo) -> String {
    let t = match pb::FileType::try_from(e.r#type) {
        Ok(pb::FileType::Directory) => 'd',
        Ok(pb::FileType::Symlink) => 'l',
        Ok(pb::FileType::File) => '-',
        _ => '?',
    };
    let link =
        if e.symlink_target.is_empty() { String::new() } else { format!(" -> {}", crate::one_line(&e.symlink_target)) };
    // Names are the bot's: one line each, control characters written out.
    format!("{t}{:04o} {:>5} {:>5} {:>12}  {}{link}", e.mode, e.uid, e.gid, e.size_bytes, crate::one_line(&e.path))
}
