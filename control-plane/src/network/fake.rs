//! An in-memory [`Network`] for unit tests of lifecycle logic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use super::{Attachment, Network, NetworkError};

#[derive(Debug, Default)]
pub struct FakeNetwork {
    attached: Mutex<HashMap<String, Attachment>>,
    /// Make attaches fail.
    pub fail: AtomicBool,
}

impl FakeNetwork {
    pub fn attached(&self) -> Vec<String> {
        let mut v: Vec<String> = crate::sync::lock(&self.attached).keys().cloned().collect();
        v.sort();
        v
    }
}

impl Network for FakeNetwork {
    fn netns_path(&self, bot: &str) -> PathBuf {
        PathBuf::from(format!("/fake/netns/{bot}"))
    }

    async fn attach(&self, bot: &str) -> Result<Attachment, NetworkError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(NetworkError::Plugin {
                plugin: "fake".into(),
                command: "ADD".into(),
                message: "injected failure".into(),
            });
        }
        let mut m = crate::sync::lock(&self.attached);
        let ip = format!("10.0.0.{}", m.len() + 2);
        let a = Attachment {
            netns: self.netns_path(bot),
            ip: ip.clone(),
            result: json!({"ips": [{"address": format!("{ip}/24")}]}),
        };
        m.insert(bot.to_string(), a.clone());
        Ok(a)
    }

    async fn detach(&self, bot: &str, _attachment: Option<&Attachment>) -> Result<(), NetworkError> {
        crate::sync::lock(&self.attached).remove(bot);
        Ok(())
    }

    async fn repair(&self, _bot: &str, _attachment: &Attachment, _pid: u32) -> Result<Vec<String>, NetworkError> {
        Ok(Vec::new())
    }

    async fn release_leaked(&self, _known: &[String]) -> Result<Vec<String>, NetworkError> {
        Ok(Vec::new())
    }

    async fn ensure_rules(&self, _bots: &[super::BotEgress]) -> Result<Vec<String>, NetworkError> {
        Ok(Vec::new())
    }
}
