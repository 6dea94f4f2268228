//! Host-side mounts of a sandbox: the shared directory virtiofsd exports
//! (a shared mount, so rootfs mounted later propagate into virtiofsd's
//! mount namespace) and each container's rootfs under it.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Makes `dir` a shared bind mount of itself.
pub fn make_shared_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("bind {}: {e}", dir.display()))?;
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
        .map_err(|e| format!("make {} shared: {e}", dir.display()))
}

/// Unmounts everything at and below `dir` (lazily) and removes it.
pub fn remove_dir_mounts(dir: &Path) {
    let prefix = dir.display().to_string();
    let mut targets: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|t| t == &prefix || t.starts_with(&format!("{prefix}/")))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        if let Err(e) = umount2(t.as_str(), MntFlags::MNT_DETACH) {
            log::warn!("umount {t}: {e}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Mounts containerd's rootfs mounts on `bundle/rootfs` (as runc's shim
/// does) and returns the rootfs directory to share.
pub fn mount_bundle_rootfs(bundle: &Path, mounts: &[Mount], root_path: &str) -> Result<PathBuf, String> {
    if mounts.is_empty() {
        // A prepared rootfs directory (standalone bundles, ctr --rootfs).
        let root = if Path::new(root_path).is_absolute() { PathBuf::from(root_path) } else { bundle.join(root_path) };
        if !root.is_dir() {
            return Err(format!("rootfs {} is not a directory", root.display()));
        }
        return Ok(root);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    for m in mounts {
        containerd_shim::mount::mount_rootfs(Some(m.type_.as_str()), Some(m.source.as_str()), &m.options, &target)
            .map_err(|e| format!("mount rootfs ({} {}) on {}: {e}", m.type_, m.source, target.display()))?;
    }
    Ok(target)
}

/// Binds `rootfs` to `shared/<id>/rootfs`; returns the path relative to
/// the shared directory (what the agent is told).
pub fn share_rootfs(shared: &Path, id: &str, rootfs: &Path) -> Result<String, String> {
    let target = shared.join(id).join("rootfs");
    std::fs::create_dir_all(&target).map_err(|e| format!("{}: {e}", target.display()))?;
    mount(Some(rootfs), &target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| format!("bind {} to {}: {e}", rootfs.display(), target.display()))?;
    Ok(format!("{id}/rootfs"))
}

/// Undoes [`share_rootfs`] and the bundle mount.
pub fn unshare_rootfs(shared: &Path, id: &str, bundle: &Path, mounted_bundle: bool) {
    remove_dir_mounts(&shared.join(id));
    if mounted_bundle {
        let target = bundle.join("rootfs");
        if let Err(e) = umount2(&target, MntFlags::MNT_DETACH) {
            log::warn!("umount {}: {e}", target.display());
        }
    }
}
