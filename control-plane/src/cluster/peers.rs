//! Reaching the other nodes. The cluster's shared secret ([`Credential`]) is what a node presents when it
//! forwards a call to a bot's owner (with the caller's scope beside it; the owner checks both); one
//! channel per peer, connected at its first call and again after a failure, over TLS checked against
//! `cluster_ca_file` when the nodes serve TLS.
//!
//! Why a shared token over TLS rather than mutual TLS: the nodes' listener is also the users' (any node
//! answers any call), and users present bearer tokens, not client certificates; one more secret of the
//! same kind, rotated like the API tokens, adds no certificate authority to run. TLS still proves to a
//! node that the peer it dials is one the cluster's CA signed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use subtle::ConstantTimeEq;
use tonic::transport::Channel;

use crate::error::{Error, Result};

/// The metadata that carries a forwarded call's scope (`all` or `bots=a,b`; see `auth::Scope::encode`).
pub const SCOPE_HEADER: &str = "berth-forwarded-scope";

/// How long dialing a peer may take: a peer that is down but not yet marked lost fails its calls within
/// this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The shortest cluster secret accepted.
const MIN_SECRET_CHARS: usize = 32;

/// The secret every node of a cluster shares.
#[derive(Clone)]
pub struct Credential(Arc<str>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(..)")
    }
}

impl Credential {
    /// Reads the secret from `path`: its first line, trimmed, at least 32 characters of visible ASCII.
    pub fn from_file(path: &Path) -> std::result::Result<Credential, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let secret = text.lines().next().unwrap_or_default().trim();
        if secret.len() < MIN_SECRET_CHARS || !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "{}: the cluster secret must be one line of at least {MIN_SECRET_CHARS} visible ASCII characters",
                path.display()
            ));
        }
        Ok(Credential(secret.into()))
    }

    /// Whether `presented` is the secret (compared in constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        bool::from(presented.ct_eq(self.0.as_bytes()))
    }

    /// The secret, to send.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

/// Another node, ready to be called.
#[derive(Debug, Clone)]
pub struct Peer {
    pub node: String,
    pub address: String,
    pub channel: Channel,
    pub credential: Credential,
}

/// The channels to the other nodes, by name.
#[derive(Debug)]
pub(super) struct Peers {
    credential: Credential,
    /// The CA checked when dialing over TLS; `None`: the nodes serve plaintext (loopback or a private
    /// network, as `listen_tcp` allows).
    ca: Option<Vec<u8>>,
    channels: Mutex<HashMap<String, (String, Channel)>>,
}

impl Peers {
    pub(super) fn new(credential: Credential, ca: Option<Vec<u8>>) -> Peers {
        Peers { credential, ca, channels: Mutex::new(HashMap::new()) }
    }

    pub(super) fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The peer `node` at `address` (a new channel when its address changed).
    pub(super) fn get(&self, node: &str, address: &str) -> Result<Peer> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let channel = match channels.get(node) {
            Some((a, c)) if a == address => c.clone(),
            _ => {
                let scheme = if self.ca.is_some() { "https" } else { "http" };
                let c = crate::agent_client::lazy_channel(
                    &format!("{scheme}://{address}"),
                    self.ca.as_deref(),
                    CONNECT_TIMEOUT,
                )
                .map_err(|e| {
                    Error::Unavailable(format!(
                        "node `{node}`'s address {address:?} cannot be dialed: {}",
                        crate::error::chain(&e)
                    ))
                })?;
                channels.insert(node.to_string(), (address.to_string(), c.clone()));
                c
            }
        };
        Ok(Peer { node: node.into(), address: address.into(), channel, credential: self.credential.clone() })
    }
}
