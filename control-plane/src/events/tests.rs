//! The journal against a real SQLite database: order, resuming, slow watchers, and the spill while the
//! event table cannot be written.

use std::time::Duration;

use tokio_stream::StreamExt;

use super::*;
use crate::error::Error;

async fn journal(dir: &std::path::Path) -> (Journal, Store) {
    let store = Store::open(&format!("sqlite://{}?mode=rwc", dir.join("t.db").display())).await.expect("store");
    let settings = Settings { spill: dir.join("events.spill"), node: "n1".into(), keep: Duration::from_secs(3600) };
    (Journal::start(store.clone(), settings), store)
}

async fn next(w: &mut Watch) -> BotEvent {
    tokio::time::timeout(Duration::from_secs(10), w.next()).await.expect("an event in time").expect("open").expect("ok")
}

#[tokio::test]
async fn events_come_in_one_order_and_a_watch_resumes_after_any_id() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _store) = journal(dir.path()).await;
    let mut live = j.watch(None, |_| true).await.unwrap();
    for n in 0..5 {
        j.announce(&format!("b{n}"), BotState::Running, "started", "");
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next(&mut live).await);
    }
    assert_eq!(seen.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["b0", "b1", "b2", "b3", "b4"]);
    assert!(seen.windows(2).all(|w| w[1].seq == w[0].seq + 1), "{seen:?}");
    assert!(seen.iter().all(|e| e.node == "n1"));
    // Resuming after the second gives the rest, then live ones, once each.
    let mut resumed = j.watch(Some(seen[1].seq), |e| e.name != "b3").await.unwrap();
    j.announce("b5", BotState::Stopped, "stopped", "");
    let names: Vec<String> = [next(&mut resumed).await, next(&mut resumed).await, next(&mut resumed).await]
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["b2", "b4", "b5"]);
    assert!(tokio::time::timeout(Duration::from_millis(300), resumed.next()).await.is_err(), "nothing more");
    // From 0: everything kept.
    let mut all = j.watch(Some(0), |_| true).await.unwrap();
    assert_eq!(next(&mut all).await.seq, seen[0].seq);
    // An id past the newest is refused.
    let Err(Error::OutOfRange(m)) = j.watch(Some(1000), |_| true).await else { panic!("accepted") };
    assert!(m.contains("past the newest"), "{m}");
}

#[tokio::test]
async fn a_watcher_too_slow_for_the_broadcast_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _store) = journal(dir.path()).await;
    let mut slow = j.watch(None, |_| true).await.unwrap();
    let n = LIVE + 1000;
    for i in 0..n {
        j.announce(&format!("b{i}"), BotState::Running, "started", "");
    }
    assert!(j.flush(Duration::from_secs(30)).await);
    let mut last = 0;
    for i in 0..n {
        let e = next(&mut slow).await;
        assert_eq!(e.name, format!("b{i}"));
        assert!(e.seq > last);
        last = e.seq;
    }
}

#[tokio::test]
async fn events_wait_in_the_spill_while_the_table_fails_and_are_stored_in_order_once() {
    let dir = tempfile::tempdir().unwrap();
    let (j, store) = journal(dir.path()).await;
    j.announce("before", BotState::Running, "started", "");
    assert!(j.flush(Duration::from_secs(10)).await);
    // The table cannot be written (as when the database is unreachable).
    sqlx::query("ALTER TABLE bot_events RENAME TO bot_events_away").execute(store.pool()).await.unwrap();
    j.announce("a", BotState::Stopped, "stopped", "");
    j.announce("b", BotState::Running, "started", "");
    assert!(j.flush(Duration::from_secs(10)).await);
    let spilled = std::fs::read_to_string(dir.path().join("events.spill")).unwrap();
    assert_eq!(spilled.lines().count(), 2, "{spilled}");
    // Announced while the spill is pending: queued behind it, never ahead.
    sqlx::query("ALTER TABLE bot_events_away RENAME TO bot_events").execute(store.pool()).await.unwrap();
    j.announce("c", BotState::Stopped, "stopped", "");
    let mut all = j.watch(Some(0), |_| true).await.unwrap();
    let names: Vec<String> = [next(&mut all).await, next(&mut all).await, next(&mut all).await, next(&mut all).await]
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["before", "a", "b", "c"]);
    assert!(!dir.path().join("events.spill").exists());
}

#[tokio::test]
async fn a_spill_left_by_a_crash_is_stored_at_start_and_what_was_stored_already_is_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (j, store) = journal(dir.path()).await;
    j.announce("kept", BotState::Running, "started", "");
    assert!(j.flush(Duration::from_secs(10)).await);
    let stored = store.events_after(0, 10).await.unwrap();
    drop(j);
    // berthd died after storing `kept` but before removing the spill that held it, and another after it.
    let mut later = stored[0].clone();
    later.id = "later".into();
    later.name = "later".into();
    spill::Spill::new(dir.path().join("events.spill")).append(&[stored[0].clone(), later]).unwrap();
    let (j, _store) = journal(dir.path()).await;
    let mut all = j.watch(Some(0), |_| true).await.unwrap();
    assert_eq!(next(&mut all).await.name, "kept");
    assert_eq!(next(&mut all).await.name, "later");
    assert!(tokio::time::timeout(Duration::from_millis(500), all.next()).await.is_err(), "no duplicate");
}

#[tokio::test]
async fn a_resume_from_pruned_events_is_out_of_range_and_pruning_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let (j, store) = journal(dir.path()).await;
    for n in 0..3 {
        j.announce(&format!("b{n}"), BotState::Running, "started", "");
    }
    assert!(j.flush(Duration::from_secs(10)).await);
    assert_eq!(store.prune_events(i64::MAX).await.unwrap(), 2);
    let (first, newest) = store.event_bounds().await.unwrap();
    assert_eq!(first, newest);
    let Err(Error::OutOfRange(m)) = j.watch(Some(first - 2), |_| true).await else { panic!("accepted") };
    assert!(m.contains("no longer kept"), "{m}");
    // From 0 is every event kept, pruned or not.
    let mut all = j.watch(Some(0), |_| true).await.unwrap();
    assert_eq!(next(&mut all).await.seq, first);
    // Ids go on from the newest.
    j.announce("b3", BotState::Running, "started", "");
    let mut w = j.watch(Some(first), |_| true).await.unwrap();
    assert_eq!(next(&mut w).await.seq, newest + 1);
}
