//! The event journal on a real PostgreSQL: two journals (two nodes' worth) writing at once give every
//! watcher the same order with no gap, woken by NOTIFY; an event PostgreSQL refuses (a NUL in a spill an
//! older berthd wrote) is dropped alone while the events around it are stored.

use std::time::{Duration, Instant};

use berth_control_plane::events::{Journal, Settings, Watch};
use berth_control_plane::store::Store;
use berth_control_plane::store::records::{BotEvent, BotState};
use tokio_stream::StreamExt;

use crate::support::postgres::PrivatePostgres;

fn settings(dir: &std::path::Path, node: &str) -> Settings {
    Settings { spill: dir.join(format!("{node}.spill")), node: node.into(), keep: Duration::from_secs(3600) }
}

async fn take(w: &mut Watch, n: usize) -> Vec<BotEvent> {
    let mut v = Vec::new();
    while v.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(20), w.next()).await.expect("an event in time");
        v.push(e.expect("open").expect("ok"));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_writing_at_once_give_every_watcher_one_order_with_no_gap() {
    let pg = PrivatePostgres::start();
    let url = pg.database("events");
    let dir = tempfile::tempdir().unwrap();
    let n1 = Journal::start(Store::open(&url).await.unwrap(), settings(dir.path(), "n1"));
    let n2 = Journal::start(Store::open(&url).await.unwrap(), settings(dir.path(), "n2"));
    let mut w1 = n1.watch(None, |_| true).await.unwrap();
    let mut w2 = n2.watch(None, |_| true).await.unwrap();
    let writers: Vec<_> = [(n1.clone(), "a"), (n2.clone(), "b")]
        .into_iter()
        .map(|(j, p)| {
            tokio::spawn(async move {
                for i in 0..200 {
                    j.announce(&format!("{p}{i:03}"), BotState::Running, "started", "");
                    if i % 20 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let (seen1, seen2) = (take(&mut w1, 400).await, take(&mut w2, 400).await);
    assert_eq!(seen1, seen2, "both nodes' watchers see one order");
    assert!(seen1.windows(2).all(|w| w[1].seq == w[0].seq + 1), "no gap");
    for (node, p) in [("n1", "a"), ("n2", "b")] {
        let mine: Vec<&str> = seen1.iter().filter(|e| e.node == node).map(|e| e.name.as_str()).collect();
        let want: Vec<String> = (0..200).map(|i| format!("{p}{i:03}")).collect();
        assert_eq!(mine, want, "{node}'s events in the order it announced them");
    }
    // Another node's event reaches a watcher by NOTIFY, well before the one-second poll.
    let mut w2 = n2.watch(None, |e| e.name == "ping").await.unwrap();
    let mut took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        n1.announce("ping", BotState::Running, "started", "");
        take(&mut w2, 1).await;
        took.push(t.elapsed());
    }
    took.sort();
    eprintln!("an event announced on n1 seen on n2 after {took:?}");
    assert!(took[2] < Duration::from_millis(500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_postgres_refuses_is_dropped_alone() {
    let pg = PrivatePostgres::start();
    let url = pg.database("refused");
    let dir = tempfile::tempdir().unwrap();
    // A spill left by an older berthd: an event between two others carries a NUL, which PostgreSQL's text
    // cannot hold.
    let line = |id: &str, message: &str| {
        format!(
            r#"{{"id":"{id}","name":"b","kind":"started","state":"running","message":"{message}","at_ms":1,"node":"n1"}}"#
        )
    };
    let spill = format!("{}\n{}\n{}\n", line("one", "first"), line("two", "a\\u0000b"), line("three", "third"));
    std::fs::write(dir.path().join("n1.spill"), spill).unwrap();
    let j = Journal::start(Store::open(&url).await.unwrap(), settings(dir.path(), "n1"));
    let mut w = j.watch(Some(0), |_| true).await.unwrap();
    let got: Vec<String> = take(&mut w, 2).await.into_iter().map(|e| e.message).collect();
    assert_eq!(got, ["first", "third"]);
    assert!(j.flush(Duration::from_secs(10)).await);
    assert!(!dir.path().join("n1.spill").exists());
    assert_eq!(berth_control_plane::metrics::metrics().events_dropped.get(), 1);
    // What announce is given is made safe: the NUL is written out, the message is cut to 4 KiB.
    j.announce("b", BotState::Running, "started", &format!("x\0y{}", "é".repeat(5000)));
    let e = take(&mut w, 1).await.remove(0);
    assert!(e.message.starts_with("x\\u{0}y") && !e.message.contains('\0'), "{:?}", &e.message[..10]);
    assert!(e.message.len() <= 4096 && e.message.len() > 4090, "{}", e.message.len());
}
