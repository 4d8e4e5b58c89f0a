//! berthd as a library: two daemons in one process, each with its own containerd, state, network and
//! socket, serve their own bots only; one stops and its bot keeps running; it starts again on the same
//! state and finds its bot; a third on a running daemon's state is refused.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::{common, support};
use berth_control_plane::agent_client::{self, BearerAuth};
use berth_control_plane::daemon::{Config, Daemon};
use berth_proto::controlplane::v1 as pb;
use pb::bot_service_client::BotServiceClient;
use support::containerd::{PrivateContainerd, minimal_image};

/// One daemon's parts: its containerd, directories and settings.
pub(crate) struct Node {
    pub(crate) containerd: PrivateContainerd,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: Config,
}

impl Node {
    pub(crate) fn new(n: u8) -> Node {
        let containerd = PrivateContainerd::start();
        let dir = tempfile::tempdir().unwrap();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let config = Config {
            containerd_socket: containerd.socket.clone(),
            namespace: containerd.namespace.clone(),
            state_dir: dir.path().join("state"),
            run_dir: dir.path().join("run"),
            image_archives: vec![minimal_image()],
            bridge: format!("bd{}", &id[..8]),
            subnet: format!("10.{}.{}.0/24", 200 + n, id.as_bytes()[0]),
            metrics_listen: "127.0.0.1:0".into(),
            stop_timeout_ms: 5000,
            reconcile_interval_ms: 500,
            ..Config::default()
        };
        Node { containerd, dir, config }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        support::unmount_under(self.dir.path());
        let _ = std::process::Command::new("ip").args(["link", "del", &self.config.bridge]).status();
        support::remove_firewall(&self.config.bridge);
    }
}

async fn client(d: &Daemon) -> BotServiceClient<tonic::transport::Channel> {
    BotServiceClient::new(agent_client::channel(d.socket().to_str().unwrap()).await.unwrap())
}

async fn names(d: &Daemon) -> Vec<String> {
    let list = client(d).await.list_bots(pb::ListBotsRequest::default()).await.unwrap().into_inner();
    list.bots.into_iter().map(|b| b.name).collect()
}

async fn pid_of(d: &Daemon, bot: &str) -> u32 {
    let b = client(d).await.get_bot(pb::GetBotRequest { name: bot.into(), ..Default::default() }).await.unwrap();
    b.into_inner().bot.unwrap().pid
}

async fn echo(d: &Daemon, bot: &str) -> String {
    let ch = agent_client::channel(d.socket().to_str().unwrap()).await.unwrap();
    let mut a = agent_client::agent_on(ch, BearerAuth::none().with_bot(bot).unwrap());
    let r = common::run(&mut a, common::argv(&["sh", "-c", "hostname"])).await.unwrap();
    String::from_utf8(r.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_run_in_one_process_each_on_its_own_state() {
    let (a_node, b_node) = (Node::new(1), Node::new(2));
    let a = Daemon::start(a_node.config.clone()).await.unwrap();
    let b = Daemon::start(b_node.config.clone()).await.unwrap();
    assert_ne!(a.socket(), b.socket());
    assert!(a.metrics_addr().unwrap().port() != 0, "the bound port, not :0");
    for (d, name) in [(&a, "alpha"), (&b, "beta")] {
        let req = pb::CreateBotRequest { name: name.into(), ..Default::default() };
        client(d).await.create_bot(req).await.unwrap();
    }
    assert_eq!(names(&a).await, ["alpha"]);
    assert_eq!(names(&b).await, ["beta"]);
    assert_eq!(echo(&a, "alpha").await, "alpha");
    assert_eq!(echo(&b, "beta").await, "beta");
    // Each daemon's bot is in its own containerd only.
    assert!(a_node.containerd.ctr_ls("containers").iter().any(|c| c.contains("alpha")));
    assert!(!b_node.containerd.ctr_ls("containers").iter().any(|c| c.contains("alpha")));

    // A third daemon on a running one's state is refused, naming it.
    let e = Daemon::start(a_node.config.clone()).await.err().expect("a second daemon on the same state");
    assert!(e.to_string().contains("already"), "{e}");

    // One stops: the other goes on serving; the stopped one's bot keeps running.
    let before = pid_of(&a, "alpha").await;
    a.stop().await;
    assert!(!a_node.config.run_dir.join("berthd.sock").exists(), "the socket is removed at stop");
    assert_eq!(echo(&b, "beta").await, "beta");
    // Started again on the same state (in the same process: the lock went with the first), it finds its
    // bot with the same agent.
    let a = Daemon::start(a_node.config.clone()).await.unwrap();
    assert_eq!(names(&a).await, ["alpha"]);
    assert_eq!(pid_of(&a, "alpha").await, before, "the bot was restarted");
    assert_eq!(echo(&a, "alpha").await, "alpha");
    for (d, name) in [(&a, "alpha"), (&b, "beta")] {
        client(d).await.delete_bot(pb::DeleteBotRequest { name: name.into(), ..Default::default() }).await.unwrap();
    }
    a.stop().await;
    b.stop().await;
}
