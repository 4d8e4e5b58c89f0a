//! A private OCI registry for tests (Debian's `docker-registry`) on loopback: open, with htpasswd basic
//! auth, or over TLS with bearer-token auth from a token service (`fixtures/registry_token_server.py`,
//! keys and certificates made with `openssl`); and a pusher that uploads an OCI archive into it through
//! the distribution API.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateRegistry {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub auth: Option<(String, String)>,
    /// With TLS: the CA certificate (a PEM file) clients must trust.
    pub ca: Option<PathBuf>,
    /// With token auth: the token service's URL and the registry's service name.
    token: Option<(String, String)>,
    child: Option<Child>,
    token_child: Option<Child>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port()
}

/// A fresh CA (`ca.crt`, `ca.key`) in `dir` and a certificate it signed for 127.0.0.1 (`tls.crt`,
/// `tls.key`).
pub fn localhost_certificate(dir: &std::path::Path) {
    let d = |n: &str| dir.join(n).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=berth-test-ca",
        "-keyout",
        &d("ca.key"),
        "-out",
        &d("ca.crt"),
    ]);
    signed_certificate(dir, dir, "127.0.0.1");
}

/// A key and certificate for `ip` (`tls.key`, `tls.crt` in `out`), signed by the CA that
/// [`localhost_certificate`] made in `ca_dir`.
pub fn signed_certificate(ca_dir: &std::path::Path, out: &std::path::Path, ip: &str) {
    std::fs::create_dir_all(out).expect("certificate dir");
    let d = |n: &str| out.join(n).display().to_string();
    let ca = |n: &str| ca_dir.join(n).display().to_string();
    let subject = format!("/CN={ip}");
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        &subject,
        "-keyout",
        &d("tls.key"),
        "-out",
        &d("tls.csr"),
    ]);
    std::fs::write(out.join("san.ext"), format!("subjectAltName=IP:{ip}\n")).expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &d("tls.csr"),
        "-CA",
        &ca("ca.crt"),
        "-CAkey",
        &ca("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &d("san.ext"),
        "-out",
        &d("tls.crt"),
    ]);
}

fn openssl(args: &[&str]) {
    let out =
        Command::new("openssl").args(args).output().expect("openssl is not installed: run scripts/install-deps.sh");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes `config` to `dir/config.yml`, starts docker-registry on it (log in `dir/registry.log`) and
/// waits until it listens on `addr`.
fn spawn_registry(dir: &std::path::Path, config: &str, addr: &str) -> std::process::Child {
    std::fs::write(dir.join("config.yml"), config).expect("write registry config");
    let mut child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).expect("log"))
        .spawn()
        .expect("docker-registry is not installed: run scripts/install-deps.sh");
    if let Err(panic) = std::panic::catch_unwind(|| wait_listening(addr, "docker-registry")) {
        let _ = child.kill();
        let _ = child.wait();
        std::panic::resume_unwind(panic);
    }
    child
}

fn wait_listening(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr} within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl PrivateRegistry {
    pub fn start(auth: Option<(&str, &str)>) -> PrivateRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((u, p)) = auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", u, p])
                .output()
                .expect("htpasswd (apache2-utils) is not installed: run scripts/install-deps.sh");
            std::fs::write(dir.path().join("htpasswd"), out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        let child = spawn_registry(dir.path(), &config, &addr);
        PrivateRegistry {
            dir,
            addr,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
            ca: None,
            token: None,
            child: Some(child),
            token_child: None,
        }
    }

    /// A registry over HTTPS (a certificate for 127.0.0.1 from a fresh CA) that accepts only bearer tokens
    /// from a token service, which issues them to `user`/`password`.
    pub fn start_tls_token(user: &str, password: &str) -> PrivateRegistry {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = |n: &str| dir.path().join(n).display().to_string();
        localhost_certificate(dir.path());
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=berth-token-signer",
            "-keyout",
            &d("token.key"),
            "-out",
            &d("token.crt"),
        ]);
        let token_port = free_port();
        let realm = format!("http://127.0.0.1:{token_port}/token");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/registry_token_server.py");
        let token_child = Command::new(crate::common::dep("venv/bin/python"))
            .arg(script)
            .args([&token_port.to_string(), &d("token.key"), &d("token.crt"), user, password, "berth-test-issuer"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("token.log")).expect("log"))
            .spawn()
            .expect("start the token service");
        wait_listening(&format!("127.0.0.1:{token_port}"), "the token service");
        let addr = format!("127.0.0.1:{}", free_port());
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n\
             http:\n  addr: {addr}\n  tls:\n    certificate: {crt}\n    key: {key}\n\
             auth:\n  token:\n    realm: {realm}\n    service: berth-test-registry\n    issuer: berth-test-issuer\n\
             \x20   rootcertbundle: {bundle}\n",
            data = d("data"),
            crt = d("tls.crt"),
            key = d("tls.key"),
            bundle = d("token.crt"),
        );
        let child = spawn_registry(dir.path(), &config, &addr);
        let ca = dir.path().join("ca.crt");
        PrivateRegistry {
            dir,
            addr,
            auth: Some((user.to_string(), password.to_string())),
            ca: Some(ca),
            token: Some((realm, "berth-test-registry".into())),
            child: Some(child),
            token_child: Some(token_child),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.ca.is_some() { "https" } else { "http" }
    }

    fn client(&self) -> reqwest::Client {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).expect("read ca");
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("ca pem"));
        }
        b.build().expect("client")
    }

    /// Authenticates a request: basic auth, or a bearer token for push and pull of `repo`.
    async fn authorize(&self, client: &reqwest::Client, repo: &str) -> Option<String> {
        let (user, pass) = self.auth.clone()?;
        let Some((realm, service)) = &self.token else {
            return Some(format!("Basic {}", base64_std(&format!("{user}:{pass}"))));
        };
        let r = client
            .get(realm)
            .query(&[("service", service.as_str()), ("scope", &format!("repository:{repo}:pull,push"))])
            .basic_auth(user, Some(pass))
            .send()
            .await
            .expect("token request");
        assert!(r.status().is_success(), "token service: {}", r.status());
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.expect("token body")).expect("token json");
        Some(format!("Bearer {}", v["token"].as_str().expect("token")))
    }

    /// Pushes the image in an OCI archive as `repo:tag`.
    pub async fn push_archive(&self, archive: &Path, repo: &str, tag: &str) {
        let mut files = HashMap::new();
        let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("archive"));
        for e in tar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = e.path().expect("path").to_string_lossy().into_owned();
            let mut v = Vec::new();
            e.read_to_end(&mut v).expect("read");
            files.insert(name, v);
        }
        let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).expect("index");
        let mdesc = &index["manifests"][0];
        let blob = |d: &str| files[&format!("blobs/sha256/{}", d.trim_start_matches("sha256:"))].clone();
        let manifest_bytes = blob(mdesc["digest"].as_str().expect("digest"));
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).expect("manifest");
        let client = self.client();
        let auth = self.authorize(&client, repo).await;
        let req = |rb: reqwest::RequestBuilder| match &auth {
            Some(a) => rb.header("authorization", a),
            None => rb,
        };
        let base = format!("{}://{}/v2/{repo}", self.scheme(), self.addr);
        let mut digests = vec![manifest["config"]["digest"].as_str().expect("config").to_string()];
        digests.extend(
            manifest["layers"].as_array().expect("layers").iter().map(|l| l["digest"].as_str().expect("d").to_string()),
        );
        for d in digests {
            let r = req(client.post(format!("{base}/blobs/uploads/"))).send().await.expect("start upload");
            assert_eq!(r.status().as_u16(), 202, "start upload: {}", r.text().await.unwrap_or_default());
            let loc = r.headers()["location"].to_str().expect("location").to_string();
            let loc = if loc.starts_with("http") { loc } else { format!("{}://{}{loc}", self.scheme(), self.addr) };
            let sep = if loc.contains('?') { '&' } else { '?' };
            let r = req(client.put(format!("{loc}{sep}digest={d}"))).body(blob(&d)).send().await.expect("upload");
            assert_eq!(r.status().as_u16(), 201, "upload {d}: {}", r.text().await.unwrap_or_default());
        }
        let r = req(client.put(format!("{base}/manifests/{tag}")))
            .header("content-type", mdesc["mediaType"].as_str().expect("media type"))
            .body(manifest_bytes)
            .send()
            .await
            .expect("put manifest");
        assert_eq!(r.status().as_u16(), 201, "put manifest: {}", r.text().await.unwrap_or_default());
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        for mut c in [self.child.take(), self.token_child.take()].into_iter().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Standard base64 (with padding), for a basic-auth header.
fn base64_std(s: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
