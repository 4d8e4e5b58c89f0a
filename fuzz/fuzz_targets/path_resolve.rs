//! Client path resolution on arbitrary strings: the result is a clean path under the root (no `..`,
//! `.`, empty or slash-bearing components, no NUL), and resolving its own display gives it back.
#![no_main]

use berth_agent::fs::root::Root;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    let root = Root::new(std::path::Path::new("/"), "/data").expect("root");
    let Ok(rel) = root.resolve(path) else {
        assert!(path.contains('\0'), "only a NUL byte may make a path unresolvable");
        return;
    };
    let shown = rel.display();
    assert!(shown.starts_with('/'), "{shown:?}");
    for c in shown.split('/').skip(1).filter(|c| !c.is_empty()) {
        assert!(c != ".." && c != "." && !c.contains('\0'), "{shown:?} from {path:?}");
    }
    let again = root.resolve(&shown).expect("a resolved path resolves");
    assert_eq!(again.display(), shown);
    // Climbing can never leave the root: any number of `..` from any result stays at or under `/`.
    let up = root.resolve(&format!("{shown}/../../../../..")).expect("resolves");
    assert!(up.display().starts_with('/'));
});
