//! Detached processes through berthd and the `berth` CLI, in a real bot: a process that outlives its
//! reader (killed with SIGKILL) and berthd (killed and started again), output resumed from the last
//! byte the killed reader printed, `ps`, `kill` and `ps rm`.

use std::process::Stdio;
use std::time::Duration;

use crate::support::berthd::TestBerthd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_process_outlives_its_reader_and_berthd_and_logs_resume_where_they_stopped() {
    let mut b = TestBerthd::start(None);
    b.cli(&["bot", "create", "d"]);
    // Numbered lines over about two seconds; the same lines go to a file in the bot.
    let script = "i=0; while [ $i -lt 3000 ]; do echo line $i; echo line $i >> /data/copy; i=$((i+1)); \
                  [ $((i % 100)) = 0 ] && sleep 0.05; done; exit 0";
    let id = b.cli(&["exec", "-d", "--tag", "count", "d", "--", "sh", "-c", script]).trim().to_string();
    assert_eq!(id.len(), 12, "the id is printed: {id:?}");
    let ps = b.cli(&["ps", "d"]);
    assert!(ps.contains(&id) && ps.contains("count") && ps.contains("running"), "{ps}");

    // A reader following the output is killed mid-stream; then berthd is killed and started again.
    let mut reader = b.berth(&["logs", "d", &id, "-f"]).stdout(Stdio::piped()).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    reader.kill().unwrap();
    let partial = reader.wait_with_output().unwrap().stdout;
    assert!(!partial.is_empty(), "the reader printed something before it was killed");
    b.halt(libc::SIGKILL);
    b.spawn();

    // The process kept running; reading on from the killed reader's last byte gives the rest.
    let rest = b.cli(&["logs", "d", &id, "-f", "--from", &partial.len().to_string()]);
    let mut all = partial;
    all.extend(rest.into_bytes());
    let copy = b.sh("d", "cat /data/copy").await;
    assert_eq!(all.len(), copy.len(), "nothing lost, nothing repeated");
    assert!(all == copy.as_bytes(), "the output read in two parts is the process's output");
    assert!(copy.ends_with("line 2999\n"));
    let ps = b.cli(&["ps", "d"]);
    assert!(ps.contains("exited with code 0"), "{ps}");

    // A bad id and a running process's removal are refused with a reason; a finished one is removed.
    let o = b.berth(&["logs", "d", "nope"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no detached process `nope`"), "{o:?}");
    let sleeper = b.cli(&["exec", "-d", "d", "--", "sleep", "1000"]).trim().to_string();
    let o = b.berth(&["ps", "rm", "d", &sleeper]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("still running"), "{o:?}");
    b.cli(&["kill", "d", &sleeper]);
    let mut gone = false;
    for _ in 0..100 {
        if b.cli(&["ps", "d"]).lines().any(|l| l.starts_with(&sleeper) && l.contains("killed by SIGKILL")) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the killed process is listed as killed: {}", b.cli(&["ps", "d"]));
    b.cli(&["ps", "rm", "d", &id, &sleeper]);
    let ps = b.cli(&["ps", "d"]);
    assert!(!ps.contains(&id) && !ps.contains(&sleeper), "{ps}");
}
