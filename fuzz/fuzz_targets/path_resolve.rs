//! Client path normalisation (what the agent's `Root::resolve` does before `openat2`) on arbitrary
//! strings: the result is a clean path under the root (no `..`, `.`, empty or slash-bearing components,
//! no NUL), and normalising its own display gives it back.
#![no_main]

use berth_agent_input::path::{RelPath, normalize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let base = RelPath::root().join("data");
    let Ok(rel) = normalize(&base, path) else {
        assert!(path.contains('\0'), "only a NUL byte may make a path unresolvable");
        return;
    };
    let shown = rel.display();
    assert!(shown.starts_with('/'), "{shown:?}");
    for c in shown.split('/').skip(1).filter(|c| !c.is_empty()) {
        assert!(c != ".." && c != "." && !c.contains('\0'), "{shown:?} from {path:?}");
    }
    let again = normalize(&base, &shown).expect("a normalised path normalises");
    assert_eq!(again.display(), shown);
    // Climbing can never leave the root: any number of `..` from any result stays at or under `/`.
    let up = normalize(&base, &format!("{shown}/../../../../..")).expect("normalises");
    assert!(up.display().starts_with('/'));
});
