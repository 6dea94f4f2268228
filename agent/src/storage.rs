//! Guest-local storage for a pod's containers: tmpfs mounts under
//! [`EPHEMERAL_ROOT`] that the specs' mounts bind from. The shim asks for
//! one for the pod's `/dev/shm` and for each memory-backed emptyDir, so the
//! pod's containers share it inside the VM (as they share the host tmpfs
//! under runc) and its pages live in guest RAM, not behind virtio-fs.
//! Each is set up once: the pod's later containers find it mounted.

use std::path::{Component, Path};

use kata_like_protocol::agent::Storage;
use nix::mount::MsFlags;

/// The only place storages may be mounted.
pub const EPHEMERAL_ROOT: &str = kata_like_protocol::GUEST_EPHEMERAL_ROOT;

/// Checks a requested mount point: absolute, directly or deeper under
/// [`EPHEMERAL_ROOT`], with no `.`/`..` components.
pub fn validate(storage: &Storage) -> Result<(), String> {
    let path = Path::new(&storage.mount_point);
    let sub = path
        .strip_prefix(EPHEMERAL_ROOT)
        .map_err(|_| format!("storage mount point {:?} is not under {EPHEMERAL_ROOT}", storage.mount_point))?;
    if sub.as_os_str().is_empty() || !sub.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "storage mount point {:?} must name a directory below {EPHEMERAL_ROOT}",
            storage.mount_point
        ));
    }
    if storage.mode > 0o7777 {
        return Err(format!("storage {:?}: mode {:o} is not a permission mode", storage.mount_point, storage.mode));
    }
    Ok(())
}

/// Whether `path` is a mount point in the agent's mount namespace.
pub fn mounted(path: &Path) -> bool {
    let shown = path.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&shown))
}

/// Mounts each storage that is not mounted yet.
pub fn ensure(storages: &[Storage]) -> Result<(), String> {
    for s in storages {
        validate(s)?;
        let path = Path::new(&s.mount_point);
        if mounted(path) {
            continue;
        }
        std::fs::create_dir_all(path).map_err(|e| format!("storage {}: {e}", path.display()))?;
        let mut data = format!("mode={:o}", s.mode);
        if s.size_bytes > 0 {
            data.push_str(&format!(",size={}", s.size_bytes));
        }
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(|e| format!("storage {}: mount tmpfs ({data}): {e}", path.display()))?;
        tracing::info!(path = %path.display(), size = s.size_bytes, "storage mounted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(p: &str, mode: u32) -> Storage {
        Storage { mount_point: p.into(), size_bytes: 1 << 20, mode, ..Default::default() }
    }

    #[test]
    fn only_paths_below_the_ephemeral_root_are_accepted() {
        assert!(validate(&storage("/run/kata-like/ephemeral/shm", 0o1777)).is_ok());
        for bad in ["/etc", "/run/kata-like/ephemeral", "/run/kata-like/ephemeral/../../etc", "relative", ""] {
            let err = validate(&storage(bad, 0o755)).unwrap_err();
            assert!(err.contains("storage mount point"), "{bad}: {err}");
        }
        assert!(validate(&storage("/run/kata-like/ephemeral/x", 0o20000)).unwrap_err().contains("mode"));
    }
}
