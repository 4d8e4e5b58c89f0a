//! A client's path, normalised lexically: relative paths start at a base, `.` and empty components go,
//! `..` never climbs above `/`. Resolving what remains on disk (with `openat2(RESOLVE_IN_ROOT)`) is the
//! agent's `fs::root`.

/// A normalised client path: components below the root, none of them empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RelPath {
    components: Vec<String>,
}

/// A path that cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path {0:?} contains a NUL byte")]
pub struct PathError(pub String);

impl RelPath {
    /// The root itself.
    pub fn root() -> RelPath {
        RelPath::default()
    }

    /// The components below the root.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The path as the client sees it inside the root, e.g. `/data/notes.md`.
    pub fn display(&self) -> String {
        if self.components.is_empty() { "/".to_string() } else { format!("/{}", self.components.join("/")) }
    }

    /// The path relative to the root, as passed to `openat2` (`.` for the root itself).
    pub fn as_relative(&self) -> String {
        if self.components.is_empty() { ".".to_string() } else { self.components.join("/") }
    }

    /// True for the root itself.
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The parent path and the final component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &str)> {
        let (last, rest) = self.components.split_last()?;
        Some((RelPath { components: rest.to_vec() }, last.as_str()))
    }

    /// A child of this path (`name` must be a single normal component).
    pub fn join(&self, name: &str) -> RelPath {
        let mut components = self.components.clone();
        components.push(name.to_string());
        RelPath { components }
    }

    /// Every ancestor from the first component down to this path itself.
    pub fn prefixes(&self) -> impl Iterator<Item = RelPath> + '_ {
        (1..=self.components.len()).map(|n| RelPath { components: self.components[..n].to_vec() })
    }

    /// Path of `self` relative to `base`, if `base` is an ancestor (or equal).
    pub fn strip_prefix(&self, base: &RelPath) -> Option<String> {
        let rest = self.components.strip_prefix(base.components.as_slice())?;
        Some(rest.join("/"))
    }
}

/// Normalises `client_path`: a relative one starts at `base`; `..` never climbs above `/`.
pub fn normalize(base: &RelPath, client_path: &str) -> Result<RelPath, PathError> {
    if client_path.as_bytes().contains(&0) {
        return Err(PathError(client_path.to_string()));
    }
    let mut components = if client_path.starts_with('/') { Vec::new() } else { base.components.clone() };
    for part in client_path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                components.pop();
            }
            p => components.push(p.to_string()),
        }
    }
    Ok(RelPath { components })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn base() -> RelPath {
        RelPath::root().join("data")
    }

    #[test]
    fn relative_paths_start_at_the_base() {
        assert_eq!(normalize(&base(), "a/b").unwrap().display(), "/data/a/b");
        assert_eq!(normalize(&base(), "").unwrap().display(), "/data");
        assert_eq!(normalize(&base(), "/etc//x/./y").unwrap().display(), "/etc/x/y");
    }

    #[test]
    fn dotdot_never_climbs_above_root() {
        assert_eq!(normalize(&base(), "../../../../etc/passwd").unwrap().display(), "/etc/passwd");
        assert_eq!(normalize(&base(), "/..").unwrap().display(), "/");
    }

    #[test]
    fn nul_is_rejected() {
        assert!(normalize(&base(), "a\0b").is_err());
    }
}
