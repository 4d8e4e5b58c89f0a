//! Detached processes through berthd and the `berth` CLI, in a real bot: a process that outlives its
//! reader (killed with SIGKILL) and berthd (killed and started again), output resumed from the last
//! byte the killed reader printed, 50 MiB read by readers killed at random points, `attach` to a
//! terminal process after a berthd restart, `ps`, `kill` and `ps rm`.

use std::io::Read;
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

/// Reads `berth logs BOT ID -f --from OFFSET --stream S` for about `ms` milliseconds, then kills the
/// reader with SIGKILL; returns what it printed (everything it wrote before it died) and whether it
/// ended on its own.
fn read_until_killed(b: &TestBerthd, id: &str, stream: &str, from: usize, ms: u64) -> (Vec<u8>, bool) {
    let mut child = b
        .berth(&["logs", "d", id, "-f", "--from", &from.to_string(), "--stream", stream])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        out.read_to_end(&mut buf).unwrap();
        buf
    });
    std::thread::sleep(Duration::from_millis(ms));
    let ended = child.try_wait().unwrap().is_some_and(|s| s.success());
    let _ = child.kill();
    let _ = child.wait();
    (reader.join().unwrap(), ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_read_by_readers_killed_at_random_points_is_the_output_byte_for_byte() {
    let b = TestBerthd::start(None);
    b.cli(&["bot", "create", "d", "--memory", "1G"]);
    // 50 MiB in all, stdout and stderr interleaved, and the same bytes in two files in the bot.
    let script = "head -c 31457280 /dev/urandom > /data/o; head -c 20971520 /dev/urandom > /data/e; \
                  cat /data/o & cat /data/e >&2; wait";
    let id = b.cli(&["exec", "-d", "d", "--", "sh", "-c", script]).trim().to_string();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    for (stream, file) in [("stdout", "/data/o"), ("stderr", "/data/e")] {
        let mut all = Vec::new();
        loop {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let (got, ended) = read_until_killed(&b, &id, stream, all.len(), 10 + rng % 50);
            all.extend(got);
            if ended {
                break;
            }
            kills += 1;
        }
        let want = b.sh("d", &format!("sha256sum {file} | cut -d' ' -f1")).await;
        let got = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&all));
        assert_eq!(got, want.trim(), "{stream}: {} bytes read", all.len());
    }
    assert!(kills >= 20, "only {kills} readers were killed; the test wants at least 20");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_after_a_berthd_restart_shows_the_terminals_recent_output_and_takes_keys() {
    let mut b = TestBerthd::start(None);
    b.cli(&["bot", "create", "d"]);
    let id = b.cli(&["exec", "-d", "-t", "d", "--", "sh", "-c", "echo on-the-screen; exec cat"]).trim().to_string();
    b.halt(libc::SIGKILL);
    b.spawn();
    let mut attach = b.berth(&["attach", "d", &id]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = attach.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        stdin.write_all(b"typed-keys\n").unwrap();
        // Dropping stdin sends the terminal's EOF: cat ends, and so does the attach.
    }
    let o = attach.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{screen}");
    assert!(screen.contains("on-the-screen"), "the recent screen is shown first: {screen:?}");
    assert!(screen.matches("typed-keys").count() >= 2, "the keys reached cat (echoed, then printed): {screen:?}");
}
