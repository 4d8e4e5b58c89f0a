//! The commands that talk to berthd: `berth bot …`, `berth exec NAME`, `berth cp`, `berth mcp NAME`.
//! File, exec and MCP commands speak the agent protocol through berthd (routed by the `berth-bot`
//! header), so they behave exactly as `berth agent …` does against one agent.

use std::collections::HashMap;

use anyhow::{Context, bail};
use berth_control_plane::agent_client::{self, AgentClient, BearerAuth};
use berth_proto::controlplane::v1 as pb;
use pb::bot_service_client::BotServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A BotService client with the caller's token.
type Bots = BotServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Where berthd is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// berthd's address: a Unix socket path, http://IP:PORT or https://IP:PORT.
    #[arg(long, global = true, env = "BERTH_ADDR", default_value = "/run/berth/berthd.sock")]
    addr: String,
    /// API token (or set BERTH_TOKEN).
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of the CA that signed berthd's TLS certificate (for an https:// address).
    #[arg(long, global = true, env = "BERTH_CA")]
    ca: Option<std::path::PathBuf>,
}

impl Conn {
    pub fn auth(&self) -> anyhow::Result<BearerAuth> {
        match &self.token {
            Some(t) => BearerAuth::new(t).context("the API token is empty or not printable ASCII"),
            None => Ok(BearerAuth::none()),
        }
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let ca = match &self.ca {
            Some(p) => Some(std::fs::read(p).with_context(|| format!("cannot read the CA file {}", p.display()))?),
            None => None,
        };
        if self.addr.starts_with("https://") && ca.is_none() {
            anyhow::bail!("an https:// address needs the CA of berthd's certificate: --ca FILE or BERTH_CA");
        }
        agent_client::channel_with_ca(&self.addr, ca.as_deref())
            .await
            .with_context(|| format!("cannot reach berthd at {}", self.addr))
    }

    async fn bots(&self) -> anyhow::Result<Bots> {
        Ok(BotServiceClient::with_interceptor(self.channel().await?, self.auth()?))
    }

    /// An agent-protocol client for bot `name`, through berthd.
    pub async fn agent(&self, name: &str) -> anyhow::Result<AgentClient> {
        let auth = self.auth()?.with_bot(name).with_context(|| format!("bot name {name:?} is not valid"))?;
        Ok(agent_client::agent_on(self.channel().await?, auth))
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// List the images bots can be created from.
    Ls,
    /// Pull REGISTRY/REPOSITORY[:TAG|@DIGEST] into berthd.
    Pull {
        reference: String,
        /// Registry user (the password comes from BERTH_REGISTRY_PASSWORD).
        #[arg(long)]
        username: Option<String>,
        #[arg(long, env = "BERTH_REGISTRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Import an OCI image-layout archive (a path on berthd's host).
    Import { archive: String },
}

pub async fn image(conn: &Conn, cmd: ImageCommand) -> anyhow::Result<i32> {
    let mut c = pb::image_service_client::ImageServiceClient::with_interceptor(conn.channel().await?, conn.auth()?);
    let show = |i: Option<pb::Image>| {
        if let Some(i) = i {
            println!("{} {}", i.name, i.manifest_digest);
        }
    };
    match cmd {
        ImageCommand::Ls => {
            for i in
                c.list_images(pb::ListImagesRequest {}).await.map_err(status_err("list images"))?.into_inner().images
            {
                show(Some(i));
            }
        }
        ImageCommand::Pull { reference, username, password } => {
            let req = pb::PullImageRequest {
                reference,
                username: username.unwrap_or_default(),
                password: password.unwrap_or_default(),
            };
            show(c.pull_image(req).await.map_err(status_err("pull"))?.into_inner().image);
        }
        ImageCommand::Import { archive } => {
            show(
                c.import_image(pb::ImportImageRequest { archive_path: archive })
                    .await
                    .map_err(status_err("import"))?
                    .into_inner()
                    .image,
            );
        }
    }
    Ok(0)
}

#[derive(Debug, clap::Subcommand)]
pub enum BotCommand {
    /// Create a bot (and start it unless --no-start).
    Create {
        name: String,
        /// Image reference (default: berthd's default image).
        #[arg(long, default_value = "")]
        image: String,
        /// Memory limit, e.g. 512M or 2G, or `unlimited` (default: berthd's default_memory_bytes).
        #[arg(long, value_parser = |s: &str| parse_limit(s, parse_bytes))]
        memory: Option<Limit>,
        /// CPU limit in cores, e.g. 0.5 or 2, or `unlimited` (default: berthd's default_cpu_millis).
        #[arg(long, value_parser = |s: &str| parse_limit(s, parse_cpus))]
        cpus: Option<Limit>,
        /// Maximum number of processes and threads, or `unlimited` (default: berthd's default_pids).
        #[arg(long, value_parser = |s: &str| parse_limit(s, |v| v.parse::<u64>().map_err(|e| format!("`{v}`: {e}"))))]
        pids: Option<Limit>,
        /// Disk limit of the bot's files (its writable layer, /data included), e.g. 10G, or `unlimited`
        /// (default: berthd's default_disk_bytes; enforced where containerd's root is on btrfs).
        #[arg(long, value_parser = |s: &str| parse_limit(s, parse_bytes))]
        disk: Option<Limit>,
        /// Environment variable (repeatable).
        #[arg(short = 'e', long = "env", value_parser = parse_kv)]
        env: Vec<(String, String)>,
        /// Label (repeatable).
        #[arg(short = 'l', long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        /// Create only; do not start.
        #[arg(long)]
        no_start: bool,
        /// Restore the data kept by `berth bot rm NAME --keep-data` (the create fails if it cannot).
        #[arg(long)]
        restore: bool,
        /// Where the bot may connect beyond the host: `all` (default), `none`, or CIDRs (`a.b.c.d/n,…`).
        #[arg(long, value_parser = parse_egress)]
        egress: Option<pb::Egress>,
        /// In a cluster: the node to create it on (default: the active node with the most memory left).
        #[arg(long, default_value = "")]
        node: String,
        /// In a cluster: only a node with this label may take it, e.g. zone=eu1 (repeatable).
        #[arg(long = "node-selector", value_parser = parse_kv)]
        node_selector: Vec<(String, String)>,
    },
    /// Change where a bot may connect: `all`, `none`, or CIDRs (`a.b.c.d/n,…`); applied at once.
    Egress {
        name: String,
        #[arg(value_parser = parse_egress)]
        policy: pb::Egress,
    },
    /// List bots.
    Ls {
        /// Only bots with this label (repeatable).
        #[arg(short = 'l', long = "label", value_parser = parse_kv)]
        labels: Vec<(String, String)>,
        #[arg(long)]
        json: bool,
    },
    /// Show one bot.
    Get {
        name: String,
        #[arg(long)]
        json: bool,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
        /// Grace period before SIGKILL, in seconds.
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Follow bot events (every bot's, or NAME's), one line each: ID, time, node, bot, kind, state,
    /// message. Reconnects after a dropped connection and resumes after the last event printed.
    Events {
        name: Option<String>,
        /// First every kept event after this id (0 = all kept), then live ones.
        #[arg(long)]
        after: Option<i64>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Delete a bot, its snapshots and its data (with --keep-data, /data is first kept as an archive).
    Rm {
        name: String,
        /// Keep /data as an archive on berthd's host, for `berth bot create NAME --restore`.
        #[arg(long)]
        keep_data: bool,
    },
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// A limit on the command line: a value, or `unlimited`.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    Unlimited,
    Value(u64),
}

fn parse_limit(s: &str, value: impl Fn(&str) -> Result<u64, String>) -> Result<Limit, String> {
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(Limit::Unlimited);
    }
    match value(s)? {
        0 => Err(format!("`{s}` is no limit at all; say `unlimited` if that is what you mean")),
        v => Ok(Limit::Value(v)),
    }
}

/// Cores (e.g. 0.5) to thousandths of a core; a positive value that rounds to nothing is an error, not
/// "unlimited".
fn parse_cpus(s: &str) -> Result<u64, String> {
    let c: f64 = s.trim().parse().map_err(|_| format!("`{s}` is not a number of cores like 0.5 or 2"))?;
    if !c.is_finite() || c <= 0.0 {
        return Err(format!("`{s}`: the CPU limit must be a positive number of cores"));
    }
    match (c * 1000.0).round() as u64 {
        0 => Err(format!("`{s}` cores is less than the smallest CPU limit (0.01)")),
        m => Ok(m),
    }
}

/// Splits a command-line limit into the API's value and `unlimited` flag.
fn limit_pb(l: Option<Limit>) -> (u64, bool) {
    match l {
        None => (0, false),
        Some(Limit::Unlimited) => (0, true),
        Some(Limit::Value(v)) => (v, false),
    }
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().to_ascii_uppercase() {
        t if t.ends_with('G') => (t[..t.len() - 1].to_string(), 1u64 << 30),
        t if t.ends_with('M') => (t[..t.len() - 1].to_string(), 1 << 20),
        t if t.ends_with('K') => (t[..t.len() - 1].to_string(), 1 << 10),
        t => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size like 512M or 2G"))?;
    Ok((n * mult as f64) as u64)
}

fn state_name(s: i32) -> &'static str {
    match pb::BotState::try_from(s) {
        Ok(pb::BotState::Creating) => "creating",
        Ok(pb::BotState::Stopped) => "stopped",
        Ok(pb::BotState::Starting) => "starting",
        Ok(pb::BotState::Running) => "running",
        Ok(pb::BotState::Stopping) => "stopping",
        Ok(pb::BotState::Deleting) => "deleting",
        Ok(pb::BotState::Error) => "error",
        _ => "unknown",
    }
}

fn json(b: &pb::Bot) -> serde_json::Value {
    let r = b.resources.unwrap_or_default();
    serde_json::json!({
        "name": b.name, "state": state_name(b.state), "image": b.image, "labels": b.labels,
        "memory_bytes": r.memory_bytes, "cpu_millis": r.cpu_millis, "pids": r.pids, "disk_bytes": r.disk_bytes,
        "disk_used_bytes": b.disk_used_bytes, "disk_quota_enforced": b.disk_quota_enforced,
        "created_at_ms": b.created_at_ms, "updated_at_ms": b.updated_at_ms, "last_error": b.last_error,
        "pid": b.pid, "env_names": b.env_names, "ip": b.ip, "restart_count": b.restart_count,
        "last_exit": b.last_exit, "desired_running": b.desired_running, "egress": egress_name(b.egress.as_ref()),
        "node": b.node, "node_lost_since_ms": b.node_lost_since_ms,
    })
}

/// `all`, `none` or a comma-separated list of CIDRs (checked by berthd).
fn parse_egress(s: &str) -> Result<pb::Egress, String> {
    use pb::egress::Mode;
    Ok(match s {
        "all" => pb::Egress { mode: Mode::AllowAll as i32, allow_cidrs: vec![] },
        "none" => pb::Egress { mode: Mode::DenyAll as i32, allow_cidrs: vec![] },
        list => pb::Egress {
            mode: Mode::AllowList as i32,
            allow_cidrs: list.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty()).collect(),
        },
    })
}

fn egress_name(e: Option<&pb::Egress>) -> String {
    use pb::egress::Mode;
    match e.map(|e| (Mode::try_from(e.mode), e)) {
        None | Some((Ok(Mode::AllowAll), _)) => "all".into(),
        Some((Ok(Mode::DenyAll), _)) => "none".into(),
        Some((_, e)) => e.allow_cidrs.join(","),
    }
}

pub fn status_err(what: &str) -> impl FnOnce(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow::anyhow!("{what} failed: {}", s.message())
}

pub async fn bot(conn: &Conn, cmd: BotCommand) -> anyhow::Result<i32> {
    let mut c = conn.bots().await?;
    match cmd {
        BotCommand::Egress { name, policy } => {
            let req = pb::SetEgressRequest { name, egress: Some(policy) };
            let b =
                c.set_egress(req).await.map_err(status_err("egress"))?.into_inner().bot.context("no bot in reply")?;
            println!("{} egress: {}", b.name, egress_name(b.egress.as_ref()));
        }
        BotCommand::Create {
            name,
            image,
            memory,
            cpus,
            pids,
            disk,
            env,
            labels,
            no_start,
            restore,
            egress,
            node,
            node_selector,
        } => {
            let req = pb::CreateBotRequest {
                name,
                image,
                env: env.into_iter().collect::<HashMap<_, _>>(),
                labels: labels.into_iter().collect::<HashMap<_, _>>(),
                resources: {
                    let ((memory_bytes, unlimited_memory), (cpu_millis, unlimited_cpu), (pids, unlimited_pids)) =
                        (limit_pb(memory), limit_pb(cpus), limit_pb(pids));
                    let (disk_bytes, unlimited_disk) = limit_pb(disk);
                    Some(pb::Resources {
                        memory_bytes,
                        cpu_millis,
                        pids,
                        unlimited_memory,
                        unlimited_cpu,
                        unlimited_pids,
                        disk_bytes,
                        unlimited_disk,
                    })
                },
                start: Some(!no_start),
                restore,
                egress,
                node,
                node_selector: node_selector.into_iter().collect::<HashMap<_, _>>(),
            };
            let b =
                c.create_bot(req).await.map_err(status_err("create"))?.into_inner().bot.context("no bot in reply")?;
            match b.node.as_str() {
                "" => println!("{} {}", b.name, state_name(b.state)),
                node => println!("{} {} on {node}", b.name, state_name(b.state)),
            }
        }
        BotCommand::Ls { labels, json: as_json } => {
            let mut token = String::new();
            let mut all = Vec::new();
            loop {
                let req = pb::ListBotsRequest {
                    label_selector: labels.iter().cloned().collect(),
                    page_size: 0,
                    page_token: token,
                };
                let page = c.list_bots(req).await.map_err(status_err("list"))?.into_inner();
                all.extend(page.bots);
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            if as_json {
                println!("{}", serde_json::Value::Array(all.iter().map(json).collect()));
            } else {
                // The NODE column appears in a cluster only (a bot has an owner there).
                let nodes = all.iter().any(|b| !b.node.is_empty());
                let node = |n: &str| if nodes { format!("{n:<16} ") } else { String::new() };
                println!("{:<24} {:<9} {}{:<15} {:<28} LAST ERROR", "NAME", "STATE", node("NODE"), "IP", "IMAGE");
                for b in &all {
                    let state = if b.node_lost_since_ms > 0 { "node-lost" } else { state_name(b.state) };
                    let (name, ip, image) = (&b.name, &b.ip, &b.image);
                    println!(
                        "{name:<24} {state:<9} {}{ip:<15} {image:<28} {}",
                        node(&b.node),
                        crate::shown(&b.last_error)
                    );
                }
            }
        }
        BotCommand::Get { name, json: as_json } => {
            let b = c
                .get_bot(pb::GetBotRequest { name, disk_usage: true })
                .await
                .map_err(status_err("get"))?
                .into_inner()
                .bot
                .context("no bot in reply")?;
            if as_json {
                println!("{}", json(&b));
            } else {
                for (k, v) in json(&b).as_object().into_iter().flatten() {
                    println!("{k}: {v}");
                }
            }
        }
        BotCommand::Start { name } => {
            let b = c
                .start_bot(pb::StartBotRequest { name })
                .await
                .map_err(status_err("start"))?
                .into_inner()
                .bot
                .context("no bot")?;
            println!("{} {}", b.name, state_name(b.state));
        }
        BotCommand::Stop { name, timeout } => {
            let timeout_ms = timeout.map_or(0, |t| (t * 1000.0) as u64);
            let b = c
                .stop_bot(pb::StopBotRequest { name, timeout_ms })
                .await
                .map_err(status_err("stop"))?
                .into_inner()
                .bot
                .context("no bot")?;
            println!("{} {}", b.name, state_name(b.state));
        }
        BotCommand::Rm { name, keep_data } => {
            c.delete_bot(pb::DeleteBotRequest { name: name.clone(), keep_data }).await.map_err(status_err("delete"))?;
            if keep_data {
                println!("{name} deleted; its data is kept (restore it with `berth bot create {name} --restore`)");
            } else {
                println!("{name} deleted");
            }
        }
        BotCommand::Events { name, after, json } => events(&mut c, name.unwrap_or_default(), after, json).await?,
    }
    Ok(0)
}

/// `berth bot events`: prints events until interrupted; a connection that drops (berthd restarting, a
/// node going away behind a balancer) is made again each second and resumed after the last event printed
/// (before the first, where the first watch started).
async fn events(c: &mut Bots, name: String, mut after: Option<i64>, as_json: bool) -> anyhow::Result<()> {
    loop {
        let req = pb::WatchEventsRequest { name: name.clone(), after_id: after };
        let err = match c.watch_events(req).await {
            Ok(stream) => {
                if after.is_none() {
                    // Where this watch starts: a connection dropped before the first event resumes there.
                    let from = stream.metadata().get(berth_proto::wire::EVENTS_AFTER_HEADER);
                    after = from.and_then(|v| v.to_str().ok()?.parse().ok());
                    if let Some(id) = after {
                        eprintln!("berth: following events after id {id}");
                    }
                }
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(e)) => {
                            after = Some(e.id);
                            print_event(&e, as_json);
                        }
                        Ok(None) => break tonic::Status::unavailable("the watch ended"),
                        Err(e) => break e,
                    }
                }
            }
            Err(e) => e,
        };
        if !matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled) {
            return Err(status_err("watch events")(err));
        }
        eprintln!("berth: events: {}; resuming in 1 s", crate::shown(err.message()));
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

fn print_event(e: &pb::BotEvent, as_json: bool) {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms.max(0) as u64);
    if as_json {
        let v = serde_json::json!({
            "id": e.id, "at_ms": e.at_ms, "node": e.node, "name": e.name, "kind": e.kind,
            "state": state_name(e.state), "message": e.message,
        });
        println!("{v}");
    } else {
        let node = if e.node.is_empty() { "-" } else { &e.node };
        let time = berth_control_plane::time::rfc3339(at);
        println!(
            "{}\t{time}\t{node}\t{}\t{}\t{}\t{}",
            e.id,
            e.name,
            e.kind,
            state_name(e.state),
            crate::shown(&e.message)
        );
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum FsCommand {
    /// List a directory: `berth fs ls bot1:/data`.
    Ls {
        target: String,
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// Describe a file.
    Stat {
        target: String,
        #[arg(short = 'L', long)]
        follow: bool,
    },
    /// Make a directory (and its parents with -p).
    Mkdir {
        target: String,
        #[arg(short = 'p', long)]
        parents: bool,
    },
    /// Remove a file, or a directory with -r. Removing what does not exist succeeds.
    Rm {
        target: String,
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// Rename within one bot: `berth fs mv bot1:/data/a bot1:/data/b`.
    Mv { from: String, to: String },
}

fn remote(s: &str) -> anyhow::Result<(&str, &str)> {
    split_remote(s).with_context(|| format!("`{s}` does not name a bot: write NAME:/path"))
}

pub async fn fs(conn: &Conn, cmd: FsCommand) -> anyhow::Result<i32> {
    use berth_proto::agent::v1 as apb;
    match cmd {
        FsCommand::Ls { target, recursive } => {
            let (bot, path) = remote(&target)?;
            crate::files::ls(conn.agent(bot).await?, crate::files::LsArgs::new(path.into(), recursive)).await?;
        }
        FsCommand::Stat { target, follow } => {
            let (bot, path) = remote(&target)?;
            crate::files::stat(conn.agent(bot).await?, crate::files::StatArgs::new(path.into(), follow)).await?;
        }
        FsCommand::Mkdir { target, parents } => {
            let (bot, path) = remote(&target)?;
            let req = apb::MkdirRequest { path: path.into(), parents, mode: 0 };
            conn.agent(bot).await?.mkdir(req).await.map_err(status_err("mkdir"))?;
        }
        FsCommand::Rm { target, recursive } => {
            let (bot, path) = remote(&target)?;
            let req = apb::DeleteRequest { path: path.into(), recursive };
            conn.agent(bot).await?.delete(req).await.map_err(status_err("rm"))?;
        }
        FsCommand::Mv { from, to } => {
            let ((b1, p1), (b2, p2)) = (remote(&from)?, remote(&to)?);
            if b1 != b2 {
                bail!("mv works within one bot; use cp to move between bots");
            }
            let req = apb::RenameRequest {
                from_path: p1.into(),
                to_path: p2.into(),
                no_overwrite: false,
                create_parents: false,
            };
            conn.agent(b1).await?.rename(req).await.map_err(status_err("mv"))?;
        }
    }
    Ok(0)
}

/// Splits `NAME:PATH` into the bot and the path (a local path has no `:` before its first `/`).
pub fn split_remote(s: &str) -> Option<(&str, &str)> {
    let (name, path) = s.split_once(':')?;
    (!name.is_empty() && !name.contains('/')).then_some((name, path))
}

/// `berth cp SRC DST` with `NAME:PATH` on exactly one side.
pub async fn cp(conn: &Conn, src: &str, dst: &str, parents: bool) -> anyhow::Result<i32> {
    let (bot, src, dst) = match (split_remote(src), split_remote(dst)) {
        (Some((b, p)), None) => (b, format!(":{p}"), dst.to_string()),
        (None, Some((b, p))) => (b, src.to_string(), format!(":{p}")),
        _ => bail!("exactly one side of cp must be in a bot, written NAME:PATH"),
    };
    let client = conn.agent(bot).await?;
    crate::files::cp(client, crate::files::CpArgs::new(src, dst, parents)).await?;
    Ok(0)
}
