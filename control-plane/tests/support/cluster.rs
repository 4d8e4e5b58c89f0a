//! A cluster node for tests and benchmarks: berthd in cluster mode over TLS on 127.0.0.N, with its own
//! certificate from the CA in `files` (which also holds the `tokens` and cluster `secret` files).

#![allow(dead_code)]

use std::path::Path;

use super::berthd::TestBerthd;
use super::containerd::PrivateContainerd;
use super::registry::signed_certificate;

/// A free port on `ip`.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port()
}

/// Node `n` of a cluster on database `db`, marked lost after `lost_after_ms`, with `extra` flags; its
/// berthd and the address it listens on (IP:PORT).
pub fn tls_node(n: u8, db: &str, files: &Path, lost_after_ms: u64, extra: &[(&str, String)]) -> (TestBerthd, String) {
    let ip = format!("127.0.0.{n}");
    let addr = format!("{ip}:{}", free_port(&ip));
    let certs = files.join(format!("node-{n}"));
    signed_certificate(files, &certs, &ip);
    let f = |p: &Path| p.to_str().unwrap().to_string();
    let mut args = vec![
        ("--cluster", "true".to_string()),
        ("--node-name", format!("node-{n}")),
        ("--listen-tcp", addr.clone()),
        ("--tls-cert-file", f(&certs.join("tls.crt"))),
        ("--tls-key-file", f(&certs.join("tls.key"))),
        ("--cluster-ca-file", f(&files.join("ca.crt"))),
        ("--api-token-file", f(&files.join("tokens"))),
        ("--cluster-token-file", f(&files.join("secret"))),
        ("--node-lost-after-ms", lost_after_ms.to_string()),
    ];
    args.extend(extra.iter().cloned());
    let flat: Vec<String> = args.iter().flat_map(|(k, v)| [k.to_string(), v.clone()]).collect();
    let flat: Vec<&str> = flat.iter().map(String::as_str).collect();
    (TestBerthd::start_on(PrivateContainerd::start(), Some(db.to_string()), &flat), addr)
}
