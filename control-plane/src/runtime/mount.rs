//! Mounting a snapshot on the host, for the control plane's own reads and writes of a bot's data (export,
//! import, backups). The runtime says what to mount ([`MountSpec`], from containerd's `Mounts`); this
//! module performs the mount and guarantees the unmount: [`Mounted`] detaches on drop if not unmounted.

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

/// One mount as a snapshotter describes it (`mount -t KIND SOURCE TARGET -o OPTIONS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

impl MountSpec {
    /// The writable layer of an overlay (or the directory of a bind mount): where a snapshot's own files
    /// live on the host.
    pub fn upper_dir(&self) -> Option<PathBuf> {
        match self.kind.as_str() {
            "overlay" => self.options.iter().find_map(|o| o.strip_prefix("upperdir=")).map(PathBuf::from),
            "bind" => Some(PathBuf::from(&self.source)),
            _ => None,
        }
    }

    /// The same layers, mounted read-only: an overlay's upper layer becomes its top lower layer (so
    /// nothing, not even overlay's work directory, is written).
    pub fn readonly(&self) -> MountSpec {
        let mut options: Vec<String> = Vec::new();
        let upper = self.options.iter().find_map(|o| o.strip_prefix("upperdir="));
        for o in &self.options {
            if o.starts_with("upperdir=") || o.starts_with("workdir=") || o == "rw" {
                continue;
            }
            match (o.strip_prefix("lowerdir="), upper) {
                (Some(lower), Some(upper)) => options.push(format!("lowerdir={upper}:{lower}")),
                _ => options.push(o.clone()),
            }
        }
        if upper.is_some() && !options.iter().any(|o| o.starts_with("lowerdir=")) {
            // An overlay with no lower layer cannot be expressed read-only; a read-only bind of the upper is.
            return MountSpec {
                kind: "bind".into(),
                source: upper.unwrap_or_default().into(),
                options: vec!["ro".into()],
            };
        }
        options.push("ro".into());
        MountSpec { kind: self.kind.clone(), source: self.source.clone(), options }
    }
}

/// A mounted snapshot; unmounted by [`Mounted::unmount`], or lazily (detached) when dropped.
#[derive(Debug)]
pub struct Mounted {
    target: PathBuf,
    mounted: bool,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Unmounts, reporting failure (a busy mount is then detached so it cannot linger).
    pub fn unmount(mut self) -> io::Result<()> {
        self.mounted = false;
        match rustix::mount::unmount(&self.target, UnmountFlags::empty()) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = rustix::mount::unmount(&self.target, UnmountFlags::DETACH);
                Err(io::Error::other(format!("unmount {}: {e}", self.target.display())))
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted
            && let Err(e) = rustix::mount::unmount(&self.target, UnmountFlags::DETACH)
        {
            tracing::warn!(path = %self.target.display(), error = %e, "failed to detach a snapshot mount");
        }
    }
}

/// Mounts `spec` at `target` (which must exist).
pub fn mount(spec: &MountSpec, target: &Path) -> io::Result<Mounted> {
    let ctx = |e: rustix::io::Errno| {
        io::Error::other(format!("mount {} ({}) on {}: {e}", spec.kind, spec.source, target.display()))
    };
    let readonly = spec.options.iter().any(|o| o == "ro");
    match spec.kind.as_str() {
        "bind" => {
            let mut flags = MountFlags::BIND;
            if spec.options.iter().any(|o| o == "rbind") {
                flags |= MountFlags::REC;
            }
            rustix::mount::mount(spec.source.as_str(), target, "none", flags, None).map_err(ctx)?;
            let mounted = Mounted { target: target.to_path_buf(), mounted: true };
            if readonly {
                rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "").map_err(ctx)?;
            }
            Ok(mounted)
        }
        "overlay" => {
            let data: Vec<&str> =
                spec.options.iter().map(String::as_str).filter(|o| *o != "ro" && *o != "rw").collect();
            let data = std::ffi::CString::new(data.join(","))
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mount options contain a NUL byte"))?;
            let flags = if readonly { MountFlags::RDONLY } else { MountFlags::empty() };
            rustix::mount::mount("overlay", target, "overlay", flags, data.as_c_str()).map_err(ctx)?;
            Ok(Mounted { target: target.to_path_buf(), mounted: true })
        }
        other => Err(io::Error::new(io::ErrorKind::Unsupported, format!("cannot mount a `{other}` snapshot"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readonly_overlay_stacks_upper_on_lowers() {
        let spec = MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec!["index=off".into(), "workdir=/w".into(), "upperdir=/u".into(), "lowerdir=/a:/b".into()],
        };
        let ro = spec.readonly();
        assert_eq!(ro.options, vec!["index=off", "lowerdir=/u:/a:/b", "ro"]);
        assert_eq!(spec.upper_dir(), Some(PathBuf::from("/u")));
    }

    #[test]
    fn readonly_bind_adds_ro() {
        let spec = MountSpec { kind: "bind".into(), source: "/s".into(), options: vec!["rw".into(), "rbind".into()] };
        assert_eq!(spec.readonly().options, vec!["rbind", "ro"]);
        assert_eq!(spec.upper_dir(), Some(PathBuf::from("/s")));
    }
}
