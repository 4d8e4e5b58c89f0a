//! Our own CNI runner (no libcni exists for Rust): execs the plugins of a network list with the CNI
//! environment and the config on stdin, threads `prevResult` through, runs DEL in reverse order with the
//! ADD result, and turns a plugin's `{code, msg}` into an error that names the plugin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::NetworkError;

/// CNI spec version we speak (the Debian plugins support up to 1.0.0).
pub const CNI_VERSION: &str = "1.0.0";
/// How long one plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One invocation's context.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub bin_dir: &'a Path,
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
}

/// Runs `command` (ADD, DEL, CHECK) for every plugin of `list` (`{name, plugins: [...]}`); for DEL the
/// plugins run in reverse. Returns the last plugin's result (ADD).
pub fn run_list(
    inv: &Invocation<'_>,
    command: &str,
    list: &Value,
    prev: Option<&Value>,
) -> Result<Value, NetworkError> {
    let name = list["name"].as_str().unwrap_or("berth");
    let plugins: Vec<Value> = list["plugins"].as_array().cloned().unwrap_or_default();
    let ordered: Vec<&Value> = if command == "DEL" { plugins.iter().rev().collect() } else { plugins.iter().collect() };
    let mut prev_result = prev.cloned();
    let mut last = Value::Null;
    for plugin in ordered {
        let mut conf = plugin.clone();
        conf["cniVersion"] = json!(CNI_VERSION);
        conf["name"] = json!(name);
        if let Some(p) = &prev_result {
            conf["prevResult"] = p.clone();
        }
        let out = run_plugin(inv, command, &conf)?;
        if command == "ADD" {
            prev_result = Some(out.clone());
            last = out;
        }
    }
    Ok(last)
}

fn run_plugin(inv: &Invocation<'_>, command: &str, conf: &Value) -> Result<Value, NetworkError> {
    let ty = conf["type"].as_str().unwrap_or_default().to_string();
    let bin: PathBuf = inv.bin_dir.join(&ty);
    let fail = |msg: String| NetworkError::Plugin { plugin: ty.clone(), command: command.to_string(), message: msg };
    let mut child = Command::new(&bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", inv.container_id)
        .env("CNI_NETNS", inv.netns)
        .env("CNI_IFNAME", inv.ifname)
        .env("CNI_PATH", inv.bin_dir)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", bin.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(conf.to_string().as_bytes()).map_err(|e| fail(format!("cannot write its config: {e}")))?;
    }
    // A plugin that hangs must not hang us: wait on a thread with a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PLUGIN_TIMEOUT) {
        Ok(r) => r.map_err(|e| fail(format!("waiting for it failed: {e}")))?,
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            return Err(fail(format!("did not finish within {PLUGIN_TIMEOUT:?}")));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let detail = serde_json::from_str::<Value>(&stdout)
            .ok()
            .and_then(|v| Some(format!("{} (code {})", v["msg"].as_str()?, v["code"])))
            .unwrap_or_else(|| format!("{} {}", stdout.trim(), String::from_utf8_lossy(&out.stderr).trim()));
        return Err(fail(detail));
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| fail(format!("its result is not JSON: {e}")))
}

/// The first IPv4 address in an ADD result, without the prefix length.
pub fn first_ip(result: &Value) -> Option<String> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let a = ip["address"].as_str()?;
        let a = a.split('/').next()?;
        a.contains('.').then(|| a.to_string())
    })
}
