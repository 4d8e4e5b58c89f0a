//! Host-side network repairs on real interfaces (root): the zeroed-MAC bridge the kernel leaves when a
//! bridge with a random MAC loses its last port, and its repair.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::Command;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn mac(dev: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{dev}/address")).unwrap().trim().to_string()
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn a_zeroed_bridge_mac_is_detected_and_repaired() {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let (br, va, vb) = (format!("bz{id}"), format!("va{id}"), format!("vb{id}"));
    let _b = Cleanup(br.clone());
    let _v = Cleanup(va.clone());
    ip(&["link", "add", &br, "type", "bridge"]);
    ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
    ip(&["link", "set", &va, "master", &br]);
    ip(&["link", "set", &va, "nomaster"]);
    assert_eq!(mac(&br), "00:00:00:00:00:00", "the kernel did not zero the MAC; this test cannot show the repair");
    berth_control_plane::network::repair_bridge_mac(&br);
    let repaired = mac(&br);
    assert_ne!(repaired, "00:00:00:00:00:00");
    assert!(repaired.starts_with("02:"), "a locally administered MAC: {repaired}");
    // Stable: the same bridge name gets the same MAC, and a healthy bridge is left alone.
    berth_control_plane::network::repair_bridge_mac(&br);
    assert_eq!(mac(&br), repaired);
}
