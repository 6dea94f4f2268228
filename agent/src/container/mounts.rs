//! OCI mount options → mount(2) flags and data, and the mount steps of a
//! container's rootfs.

use nix::mount::MsFlags;

/// A parsed OCI mount: flags for mount(2), propagation changes applied
/// after it, the fs-specific data string, and whether it is a bind mount.
#[derive(Debug, PartialEq, Eq)]
pub struct MountOptions {
    /// mount(2) flags.
    pub flags: MsFlags,
    /// Propagation flags (MS_SHARED, MS_PRIVATE, ... with MS_REC).
    pub propagation: MsFlags,
    /// Options passed as data.
    pub data: String,
    /// `bind` or `rbind`.
    pub bind: bool,
}

/// Parses OCI mount options (mount(8) names).
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out =
        MountOptions { flags: MsFlags::empty(), propagation: MsFlags::empty(), data: String::new(), bind: false };
    let mut data = Vec::new();
    for opt in options {
        let (set, clear, propagation): (MsFlags, MsFlags, MsFlags) = match opt.as_str() {
            // `rro` (recursively read-only): in the guest a shared host
            // directory is one virtio-fs mount, so the top mount's `ro`
            // covers what are submounts on the host (the shim makes those
            // read-only on the host too).
            "ro" | "rro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "bind" => {
                out.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty())
            }
            "rbind" => {
                out.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty(), MsFlags::empty())
            }
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            "defaults" | "" => continue,
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        out.flags = (out.flags | set) & !clear;
        out.propagation |= propagation;
    }
    out.data = data.join(",");
    out
}

/// Propagation of the container's root (`linux.rootfsPropagation`).
pub fn root_propagation(name: Option<&str>) -> Result<MsFlags, String> {
    Ok(match name.unwrap_or("") {
        "" | "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => return Err(format!("unknown rootfsPropagation {other:?}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse_options(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_data_and_propagation_are_split() {
        let m = opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(m.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(m.data, "mode=755,size=65536k");
        assert!(!m.bind);
        let b = opts(&["rbind", "ro", "rprivate"]);
        assert!(b.bind);
        assert_eq!(b.flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(b.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(opts(&["ro", "rw"]).flags, MsFlags::empty());
    }

    #[test]
    fn root_propagation_names() {
        assert_eq!(root_propagation(None).expect("default"), MsFlags::MS_SLAVE | MsFlags::MS_REC);
        assert!(root_propagation(Some("sideways")).unwrap_err().contains("sideways"));
    }
}
