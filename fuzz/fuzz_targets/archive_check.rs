//! The data-archive importer's check (every rule that does not depend on the bot's files, and the
//! manifest), on arbitrary bytes: plain, gzip or zstd tar. It must return a result, never panic, hang or
//! expand past its limit.
#![no_main]

use berth_archive::extract::{Options, extract};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = Options { max_bytes: 8 << 20, replace: false };
    let _ = extract(data, None, opts, &mut |_| {});
});
