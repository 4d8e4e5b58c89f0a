//! Pulling images from an OCI distribution registry over HTTPS (or plain HTTP when asked) with reqwest:
//! anonymous, HTTP basic, or bearer tokens obtained from the registry's token service with optional
//! credentials. Every blob is verified against its digest; the result is an [`ImageSource`] the runtime
//! installs exactly as an archive.

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Client, StatusCode};

use super::source::{self, Desc, ImageSource};

/// Registry credentials.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("`{0}` is not an image reference (expected HOST[:PORT]/REPOSITORY[:TAG|@DIGEST])")]
    BadReference(String),
    #[error("cannot reach the registry at {url}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the registry refused {url}: authentication failed (HTTP {status})")]
    Unauthorized { url: String, status: u16 },
    #[error("{url} not found in the registry")]
    NotFound { url: String },
    #[error("the registry answered {url} with HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
    #[error("the image from the registry is invalid: {0}")]
    Invalid(String),
}

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    /// A tag or a `sha256:` digest.
    pub reference: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = || RegistryError::BadReference(s.to_string());
        let (host, rest) = s.split_once('/').ok_or_else(bad)?;
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad());
        }
        let (repository, reference) = if let Some((r, d)) = rest.split_once('@') {
            (r.to_string(), d.to_string())
        } else {
            match rest.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r.to_string(), t.to_string()),
                _ => (rest.to_string(), "latest".to_string()),
            }
        };
        if repository.is_empty() || reference.is_empty() {
            return Err(bad());
        }
        Ok(Reference { registry: host.to_string(), repository, reference })
    }

    /// The canonical name the image is recorded under.
    pub fn name(&self) -> String {
        let sep = if self.reference.starts_with("sha256:") { '@' } else { ':' };
        format!("{}/{}{sep}{}", self.registry, self.repository, self.reference)
    }
}

struct Session {
    client: Client,
    base: String,
    creds: Option<Credentials>,
    auth: Option<String>,
}

impl Session {
    async fn get(&mut self, path: &str, accept: &str) -> Result<(Vec<u8>, HeaderMap), RegistryError> {
        let url = format!("{}{path}", self.base);
        for attempt in 0..2 {
            let mut req = self.client.get(&url).header(ACCEPT, accept);
            if let Some(a) = &self.auth {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|source| RegistryError::Unreachable { url: url.clone(), source })?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge =
                    resp.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                self.authenticate(&url, &challenge).await?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(RegistryError::Unauthorized { url, status: status.as_u16() });
            }
            if status == StatusCode::NOT_FOUND {
                return Err(RegistryError::NotFound { url });
            }
            let headers = resp.headers().clone();
            let body = resp.bytes().await.map_err(|source| RegistryError::Unreachable { url: url.clone(), source })?;
            if !status.is_success() {
                let body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                return Err(RegistryError::Status { url, status: status.as_u16(), body });
            }
            return Ok((body.to_vec(), headers));
        }
        Err(RegistryError::Unauthorized { url, status: 401 })
    }

    /// Answers a `WWW-Authenticate` challenge: Basic with the credentials, or a Bearer token from the
    /// realm (with the credentials if any).
    async fn authenticate(&mut self, url: &str, challenge: &str) -> Result<(), RegistryError> {
        let unauthorized = || RegistryError::Unauthorized { url: url.to_string(), status: 401 };
        if challenge.to_ascii_lowercase().starts_with("basic") {
            let c = self.creds.as_ref().ok_or_else(unauthorized)?;
            self.auth = Some(basic(c));
            return Ok(());
        }
        let params = challenge.strip_prefix("Bearer ").ok_or_else(unauthorized)?;
        let field = |k: &str| {
            params.split(',').find_map(|kv| {
                let (key, v) = kv.trim().split_once('=')?;
                (key == k).then(|| v.trim_matches('"').to_string())
            })
        };
        let realm = field("realm").ok_or_else(unauthorized)?;
        let mut req = self.client.get(&realm);
        let query: Vec<(String, String)> =
            ["service", "scope"].iter().filter_map(|k| field(k).map(|v| ((*k).to_string(), v))).collect();
        let q =
            query.iter().map(|(k, v)| format!("{k}={}", v.replace(':', "%3A").replace('/', "%2F"))).collect::<Vec<_>>();
        if !q.is_empty() {
            req = self.client.get(format!("{realm}?{}", q.join("&")));
        }
        if let Some(c) = &self.creds {
            req = req.header(AUTHORIZATION, basic(c));
        }
        let resp = req.send().await.map_err(|source| RegistryError::Unreachable { url: realm.clone(), source })?;
        if !resp.status().is_success() {
            return Err(unauthorized());
        }
        let body: serde_json::Value = resp.json_value().await.map_err(|_| unauthorized())?;
        let token = body["token"].as_str().or_else(|| body["access_token"].as_str()).ok_or_else(unauthorized)?;
        self.auth = Some(format!("Bearer {token}"));
        Ok(())
    }
}

trait JsonValue {
    async fn json_value(self) -> Result<serde_json::Value, ()>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<serde_json::Value, ()> {
        let b = self.bytes().await.map_err(|_| ())?;
        serde_json::from_slice(&b).map_err(|_| ())
    }
}

fn basic(c: &Credentials) -> String {
    use base64_lite::encode;
    format!("Basic {}", encode(format!("{}:{}", c.username, c.password).as_bytes()))
}

/// Minimal standard base64 (only used for the Basic header).
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[cfg(test)]
    #[test]
    fn rfc4648_vectors() {
        for (i, o) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(encode(i.as_bytes()), o);
        }
    }
}

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, \
                               application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// Pulls `reference` (linux/amd64) and verifies every blob.
/// `extra_roots` are PEM certificates trusted besides the public roots (a private registry's CA).
pub async fn fetch(
    reference: &str,
    creds: Option<Credentials>,
    plain_http: bool,
    extra_roots: &[Vec<u8>],
) -> Result<ImageSource, RegistryError> {
    let r = Reference::parse(reference)?;
    let scheme = if plain_http { "http" } else { "https" };
    let mut builder = Client::builder().connect_timeout(Duration::from_secs(10)).timeout(Duration::from_secs(600));
    for pem in extra_roots {
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|e| RegistryError::Invalid(format!("a configured registry CA certificate is invalid: {e}")))?;
        builder = builder.add_root_certificate(cert);
    }
    let client = builder.build().map_err(|source| RegistryError::Unreachable { url: r.registry.clone(), source })?;
    let mut s = Session { client, base: format!("{scheme}://{}/v2/{}", r.registry, r.repository), creds, auth: None };
    let (mut body, mut headers) = s.get(&format!("/manifests/{}", r.reference), MANIFEST_ACCEPT).await?;
    let mut media = content_type(&headers);
    if media == source::OCI_INDEX || media == source::DOCKER_LIST {
        let index: source::Index =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Invalid(format!("index: {e}")))?;
        let m = index
            .manifests
            .into_iter()
            .find(source::is_amd64)
            .ok_or_else(|| RegistryError::Invalid("no linux/amd64 manifest in the index".into()))?;
        (body, headers) = s.get(&format!("/manifests/{}", m.digest), MANIFEST_ACCEPT).await?;
        media = content_type(&headers);
    }
    let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body)));
    if r.reference.starts_with("sha256:") && r.reference != digest {
        return Err(RegistryError::Invalid(format!("manifest digest {digest} does not match {}", r.reference)));
    }
    let mdesc =
        Desc { media_type: media, digest, size: body.len() as i64, annotations: Default::default(), platform: None };
    // Blobs are fetched first (async), then assembled (sync) from what was fetched.
    let manifest: source::Manifest =
        serde_json::from_slice(&body).map_err(|e| RegistryError::Invalid(format!("manifest: {e}")))?;
    let mut blobs = std::collections::HashMap::new();
    for d in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
        let (data, _) = s.get(&format!("/blobs/{}", d.digest), "*/*").await?;
        source::verify(&d.digest, &data).map_err(RegistryError::Invalid)?;
        blobs.insert(d.digest.clone(), data);
    }
    ImageSource::assemble(r.name(), mdesc, body, |d| {
        blobs.remove(&d.digest).ok_or_else(|| format!("blob {} was not fetched", d.digest))
    })
    .map_err(RegistryError::Invalid)
}

fn content_type(h: &HeaderMap) -> String {
    h.get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(source::OCI_MANIFEST)
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// What a registry failure means to a caller.
impl From<RegistryError> for crate::error::Error {
    fn from(e: RegistryError) -> crate::error::Error {
        use crate::error::{Error, chain};
        use RegistryError as R;
        match e {
            e @ R::BadReference(_) => Error::InvalidArgument(e.to_string()),
            e @ R::NotFound { .. } => Error::NotFound(e.to_string()),
            e @ R::Unauthorized { .. } => Error::FailedPrecondition(e.to_string()),
            e @ R::Invalid(_) => Error::InvalidArgument(e.to_string()),
            e => Error::Unavailable(chain(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/berth/minimal:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.reference.as_str()),
            ("127.0.0.1:5000", "berth/minimal", "v1")
        );
        assert_eq!(Reference::parse("localhost/x").unwrap().reference, "latest");
        let d = Reference::parse("reg.example/a/b@sha256:abc").unwrap();
        assert_eq!(d.name(), "reg.example/a/b@sha256:abc");
        assert!(Reference::parse("ubuntu").is_err());
        assert!(Reference::parse("library/ubuntu:22.04").is_err(), "no registry host");
    }
}
