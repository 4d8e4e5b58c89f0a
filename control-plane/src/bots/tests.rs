//! Lifecycle logic against the fake runtime and a real SQLite file: states, failures, locking rules.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::model::BotState;
use super::{BotManager, CreateBot, ManagerConfig};
use crate::error::Error;
use crate::network::fake::FakeNetwork;
use crate::runtime::fake::FakeRuntime;
use crate::store::Store;

/// The fakes as a platform.
pub(crate) struct Fakes;

impl super::Platform for Fakes {
    type Runtime = FakeRuntime;
    type Network = FakeNetwork;
    type Agents = crate::agent_client::fake::FakeAgents;
}

/// A manager on the fakes and a SQLite file (`t.db`) in the returned directory, with image `img`.
pub(crate) async fn manager() -> (Arc<BotManager<Fakes>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display())).await.expect("store");
    let config = ManagerConfig {
        run_dir: dir.path().join("run"),
        default_image: "img".into(),
        stop_timeout: Duration::from_millis(100),
        agent_ready_timeout: Duration::from_millis(100),
        insecure_registries: vec![],
        registry_cas: vec![],
        state_dir: dir.path().join("state"),
        import_max_bytes: 1 << 30,
        default_limits: crate::runtime::Limits {
            memory_bytes: Some(1 << 30),
            cpu_millis: Some(1000),
            pids: Some(512),
            disk_bytes: None,
        },
        dns_servers: Vec::new(),
        node: None,
        events_keep: Duration::from_secs(3600),
    };
    let m = Arc::new(BotManager::<Fakes>::new(
        FakeRuntime::default(),
        FakeNetwork::default(),
        crate::agent_client::fake::FakeAgents::default(),
        store,
        config,
    ));
    m.import_image(std::path::Path::new("img")).await.expect("import");
    (m, dir)
}

fn req(name: &str) -> CreateBot {
    CreateBot { name: name.into(), ..Default::default() }
}

#[tokio::test]
async fn create_records_a_stopped_bot_with_its_agent_directory() {
    let (m, dir) = manager().await;
    let b = m.create(req("one")).await.expect("create");
    assert_eq!(b.state, BotState::Stopped);
    assert_eq!(m.runtime.containers(), ["bot-one"]);
    let token = std::fs::read_to_string(dir.path().join("run/one/conf/token")).expect("token file");
    assert_eq!(token, b.token);
    assert!(matches!(m.create(req("one")).await, Err(Error::AlreadyExists(_))));
    assert!(matches!(m.create(req("Bad")).await, Err(Error::InvalidArgument(_))));
    let bad_image = CreateBot { image: "nope".into(), ..req("two") };
    assert!(matches!(m.create(bad_image).await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn a_failed_create_leaves_nothing_and_the_name_free() {
    let (m, _dir) = manager().await;
    m.runtime.fail_create.store(true, Ordering::SeqCst);
    let e = m.create(req("broken")).await.expect_err("the runtime fails");
    assert!(crate::error::chain(&e).contains("injected failure"), "{e:?}");
    assert!(matches!(m.get("broken").await, Err(Error::NotFound(_))), "a record was left for the reconciler");
    assert!(m.runtime.containers().is_empty());
    assert!(m.network.attached().is_empty(), "the network was left attached");
    // The name is free again.
    m.runtime.fail_create.store(false, Ordering::SeqCst);
    m.create(req("broken")).await.expect("create again");
}

#[tokio::test]
async fn a_start_whose_agent_never_answers_ends_in_error_and_stops_the_task() {
    let (m, _dir) = manager().await;
    m.create(req("mute")).await.expect("create");
    m.agent_link.set_down(true);
    let err = m.start("mute").await.expect_err("the fake agent is down");
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    let (b, pid) = m.get("mute").await.expect("get");
    assert_eq!(b.state, BotState::Error);
    assert!(b.last_error.contains("did not answer"), "{}", b.last_error);
    assert_eq!(pid, None, "the task was left running");
    // Error bots can be stopped (a no-op here) and deleted.
    m.stop("mute", None).await.expect("stop");
    m.delete("mute", false).await.expect("delete");
    assert!(m.runtime.containers().is_empty());
}

#[tokio::test]
async fn a_start_waits_for_its_agent_and_a_stop_forgets_the_connection() {
    let (m, _dir) = manager().await;
    m.create(req("ok")).await.expect("create");
    let b = m.start("ok").await.expect("start");
    assert_eq!(b.state, BotState::Running);
    assert_eq!(m.agent_link.connects(), 1, "readiness is one connection, then cached");
    use crate::agent_client::BotAgent;
    assert_eq!(m.agent("ok").await.expect("agent").version().await.expect("version").agent_version, "fake");
    assert_eq!(m.agent_link.connects(), 1, "the readiness connection is reused");
    m.stop("ok", None).await.expect("stop");
    assert!(matches!(m.agent("ok").await, Err(Error::FailedPrecondition(_))), "a stopped bot has no agent");
}

#[tokio::test]
async fn list_pages_and_filters_by_label() {
    let (m, _dir) = manager().await;
    for i in 0..5 {
        let labels = [("team".to_string(), if i % 2 == 0 { "a" } else { "b" }.to_string())].into();
        m.create(CreateBot { labels, ..req(&format!("bot{i}")) }).await.expect("create");
    }
    let (page, next) = m.list(&Default::default(), 2, "").await.expect("list");
    assert_eq!(page.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["bot0", "bot1"]);
    let (page, next) = m.list(&Default::default(), 2, &next).await.expect("list");
    assert_eq!(page.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["bot2", "bot3"]);
    let (page, last) = m.list(&Default::default(), 2, &next).await.expect("list");
    assert_eq!((page.len(), last.as_str()), (1, ""));
    let sel = [("team".to_string(), "a".to_string())].into();
    let (page, _) = m.list(&sel, 0, "").await.expect("list");
    assert_eq!(page.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["bot0", "bot2", "bot4"]);
}

#[tokio::test]
async fn recover_corrects_bots_whose_task_is_gone() {
    let (m, _dir) = manager().await;
    m.create(req("lost")).await.expect("create");
    let b = m.store.get_bot("lost").await.expect("get");
    m.store.set_state(&b.name, BotState::Running, "", false).await.expect("set");
    assert_eq!(m.recover().await.expect("recover"), 1);
    let (b, _) = m.get("lost").await.expect("get");
    assert_eq!(b.state, BotState::Stopped);
    assert_eq!(m.recover().await.expect("recover"), 0, "recovery is idempotent");
}

#[tokio::test]
async fn a_failed_network_setup_leaves_no_bot_and_no_container() {
    let (m, _dir) = manager().await;
    m.network.fail.store(true, Ordering::SeqCst);
    let e = m.create(req("offline")).await.expect_err("the network fails");
    assert!(matches!(&e, Error::Unavailable(r) if r.contains("network setup failed")), "{e:?}");
    assert!(matches!(m.get("offline").await, Err(Error::NotFound(_))));
    assert!(m.runtime.containers().is_empty());
    m.network.fail.store(false, Ordering::SeqCst);
    let ok = m.create(req("online")).await.expect("create");
    assert_eq!(ok.network.expect("attached").ip, "10.0.0.2");
    m.delete("online", false).await.expect("delete");
    assert!(m.network.attached().is_empty());
}

#[tokio::test]
async fn a_bot_with_the_old_writable_agent_directory_is_not_started_and_says_how_to_recreate_it() {
    let (m, dir) = manager().await;
    m.create(req("legacy")).await.expect("create");
    // What berthd before the split left: the token straight in the bot's (then read-write) directory.
    std::fs::write(dir.path().join("run/legacy/token"), "old").expect("old token");
    let e = m.start("legacy").await.expect_err("an old-layout bot started");
    assert!(matches!(&e, Error::FailedPrecondition(m) if m.contains("berth bot create legacy --restore")), "{e:?}");
    let b = m.store.get_bot("legacy").await.expect("get");
    assert_eq!(b.state, BotState::Error);
    assert!(b.last_error.contains("re-create it"), "{}", b.last_error);
}
