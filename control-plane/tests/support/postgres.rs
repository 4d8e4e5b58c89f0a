//! A private PostgreSQL server for tests (Debian's `postgresql`): initdb into a temporary directory as
//! the `postgres` user, listening on 127.0.0.1 on a free port, stopped when dropped.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivatePostgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/install-deps.sh")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("no PostgreSQL server binaries under /usr/lib/postgresql: run scripts/install-deps.sh")
}

fn as_postgres(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let uid = nix_user("postgres");
    cmd.uid(uid.0).gid(uid.1)
}

fn nix_user(name: &str) -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for l in passwd.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.first() == Some(&name) {
            return (f[2].parse().expect("uid"), f[3].parse().expect("gid"));
        }
    }
    panic!("user {name} does not exist: install the postgresql package (scripts/install-deps.sh)");
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let (uid, gid) = nix_user("postgres");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown pg dir");
        let data = dir.path().join("data");
        let out = as_postgres(Command::new(bin.join("initdb")).args(["-D"]).arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ]))
        .output()
        .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("pg log");
        std::os::unix::fs::chown(dir.path().join("postgres.log"), Some(uid), Some(gid)).expect("chown log");
        let child = as_postgres(
            Command::new(bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .arg("-k")
                .arg(dir.path()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start postgres");
        let pg = PrivatePostgres { dir, port, child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not accept connections within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        pg
    }

    /// A URL for a fresh database `name`.
    pub fn database(&self, name: &str) -> String {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-c",
                &format!("CREATE DATABASE {name}"),
            ])
            .output()
            .expect("run psql");
        assert!(out.status.success(), "create database: {}", String::from_utf8_lossy(&out.stderr));
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            super::stop_child(&mut c, libc::SIGINT);
        }
    }
}
