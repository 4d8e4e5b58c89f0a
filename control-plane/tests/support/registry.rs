//! A private OCI registry for tests (Debian's `docker-registry`) on loopback, optionally with htpasswd
//! basic auth, and a pusher that uploads an OCI archive into it through the distribution API.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrivateRegistry {
    pub dir: tempfile::TempDir,
    pub addr: String,
    pub auth: Option<(String, String)>,
    child: Option<Child>,
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
        std::fs::write(dir.path().join("config.yml"), config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry is not installed: run scripts/install-deps.sh");
        let r =
            PrivateRegistry { dir, addr, auth: auth.map(|(u, p)| (u.to_string(), p.to_string())), child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&r.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn req(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
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
        let client = reqwest::Client::new();
        let base = format!("http://{}/v2/{repo}", self.addr);
        let mut digests = vec![manifest["config"]["digest"].as_str().expect("config").to_string()];
        digests.extend(
            manifest["layers"].as_array().expect("layers").iter().map(|l| l["digest"].as_str().expect("d").to_string()),
        );
        for d in digests {
            let r = self.req(client.post(format!("{base}/blobs/uploads/"))).send().await.expect("start upload");
            assert_eq!(r.status().as_u16(), 202, "start upload: {}", r.text().await.unwrap_or_default());
            let loc = r.headers()["location"].to_str().expect("location").to_string();
            let loc = if loc.starts_with("http") { loc } else { format!("http://{}{loc}", self.addr) };
            let sep = if loc.contains('?') { '&' } else { '?' };
            let r = self.req(client.put(format!("{loc}{sep}digest={d}"))).body(blob(&d)).send().await.expect("upload");
            assert_eq!(r.status().as_u16(), 201, "upload {d}: {}", r.text().await.unwrap_or_default());
        }
        let r = self
            .req(client.put(format!("{base}/manifests/{tag}")))
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
