//! The static agent build (what goes into bot images) runs and answers. scripts/test.sh builds it with
//! scripts/build-agent.sh and passes its path in BERTH_STATIC_AGENT; without it this test fails loudly.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use crate::common;
use berth_proto::agent::v1 as pb;
use common::*;

#[tokio::test]
async fn static_agent_is_static_and_serves() {
    let bin = std::env::var("BERTH_STATIC_AGENT")
        .expect("BERTH_STATIC_AGENT is not set: run scripts/test.sh, which builds the static agent");
    let elf = std::fs::read(&bin).expect("read static agent");
    // No PT_INTERP segment: nothing to load at run time (busybox images have no libc).
    assert!(!has_interpreter(&elf), "{bin} asks for a dynamic loader");
    let size = elf.len();
    assert!(size < 16 << 20, "static agent is {size} bytes");
    // SAFETY: set before any thread of this test process reads the environment for it.
    unsafe { std::env::set_var("BERTH_AGENT_BIN", &bin) };
    let agent = TestAgent::start().await;
    let mut c = agent.client().await;
    let r = run(&mut c, argv(&["sh", "-c", "echo static"])).await.unwrap();
    assert_eq!(r.stdout_str(), "static\n");
    let v = c.version(pb::VersionRequest {}).await.unwrap().into_inner();
    assert_eq!(v.protocol_version, 1);
}

/// Whether an ELF64 little-endian file has a PT_INTERP program header.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let off = phoff + i * phentsize;
        u32::from_le_bytes(elf[off..off + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}
