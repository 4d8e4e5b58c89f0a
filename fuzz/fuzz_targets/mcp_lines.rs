//! The MCP stdio line splitter on arbitrary output: every line it returns is exactly the bytes between
//! two `\n` (less one trailing `\r`), in order, nothing invented or dropped, and never more than the cap.
#![no_main]

use berth_agent_input::lines::LineReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cap, input)) = data.split_first() else { return };
    let max = usize::from(cap) + 1;
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async {
        let mut reader = LineReader::new(input, max);
        let mut pos = 0;
        loop {
            match reader.next_line().await {
                Ok(Some(line)) => {
                    assert!(line.len() <= max, "a line longer than the cap");
                    assert!(!line.contains(&b'\n'), "a line holds a newline");
                    assert!(input[pos..].starts_with(&line), "a line that is not the next input bytes");
                    pos += line.len();
                    let rest = &input[pos..];
                    if rest.starts_with(b"\r\n") {
                        pos += 2;
                    } else if rest.starts_with(b"\n") {
                        pos += 1;
                    } else {
                        assert!(rest.is_empty(), "a line ended before a newline or the end");
                    }
                }
                Ok(None) => {
                    assert_eq!(pos, input.len(), "input left unread at the end");
                    return;
                }
                Err(_) => return,
            }
        }
    });
});
