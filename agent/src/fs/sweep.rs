//! Removing what uploads cut short left behind: an upload writes `.NAME.berth-XXXXXXXXXXXX.tmp` beside its
//! target and renames it into place, so a killed agent (or task) leaves the temporary file. At start the
//! agent walks the data directory once, in the background, and removes such files older than itself (an
//! upload begun since then is never touched). Links are not followed; the walk is bounded.

use std::path::Path;
use std::time::SystemTime;

/// Most entries one sweep looks at (a huge tree is swept in part rather than delaying anything).
pub const MAX_ENTRIES: usize = 200_000;

/// Whether `name` is an upload's temporary file name (see `write.rs`).
pub fn is_upload_leftover(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else { return false };
    let Some((target, id)) = rest.rsplit_once(".berth-") else { return false };
    !target.is_empty() && id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub removed: usize,
    pub visited: usize,
}

/// Removes upload leftovers under `dir` last modified before `started`.
pub fn sweep(dir: &Path, started: SystemTime) -> Swept {
    let mut done = Swept::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            done.visited += 1;
            if done.visited > MAX_ENTRIES {
                tracing::warn!(dir = %dir.display(), "stopped sweeping upload leftovers after {MAX_ENTRIES} entries");
                return done;
            }
            // The entry's own type: a link is never followed.
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file()
                && entry.file_name().to_str().is_some_and(is_upload_leftover)
                && entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < started)
            {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => done.removed += 1,
                    Err(e) => {
                        tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove an upload leftover")
                    }
                }
            }
        }
    }
    done
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_upload_names_match() {
        assert!(is_upload_leftover(".big.bin.berth-0123456789ab.tmp"));
        assert!(is_upload_leftover("..hidden.berth-abcdefabcdef.tmp"));
        for name in [
            ".x.berth-0123.tmp",
            "x.berth-0123456789ab.tmp",
            ".berth-0123456789ab.tmp",
            ".x.berth-0123456789zz.tmp",
            ".x.tmp",
        ] {
            assert!(!is_upload_leftover(name), "{name}");
        }
    }

    #[test]
    fn old_leftovers_go_new_ones_and_other_files_stay_and_links_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path().join("data");
        std::fs::create_dir_all(data.join("deep")).unwrap();
        std::fs::write(data.join("deep/.f.berth-0123456789ab.tmp"), "half").unwrap();
        std::fs::write(data.join("keep.txt"), "mine").unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join(".g.berth-0123456789ab.tmp"), "not ours").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("link")).unwrap();
        let started = SystemTime::now() + std::time::Duration::from_secs(1);
        let done = sweep(&data, started);
        assert_eq!(done.removed, 1);
        assert!(!data.join("deep/.f.berth-0123456789ab.tmp").exists());
        assert!(data.join("keep.txt").exists() && outside.join(".g.berth-0123456789ab.tmp").exists());
        // One begun after the agent started is left alone.
        std::fs::write(data.join(".n.berth-0123456789ab.tmp"), "in flight").unwrap();
        assert_eq!(sweep(&data, SystemTime::now() - std::time::Duration::from_secs(60)).removed, 0);
    }
}
