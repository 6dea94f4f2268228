//! The bundle side of a containerd task: containerd hands the rootfs as
//! mounts (snapshotter overlays) to be mounted on `bundle/rootfs`, as
//! runc's shim does; the core then shares that directory with the guest.

use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;

use crate::sandbox::error::CoreError;
use crate::sandbox::spec::ContainerSpec;

/// Mounts containerd's rootfs mounts on `bundle/rootfs` (as runc's shim
/// does) and returns the rootfs directory to share.
pub fn mount_rootfs(bundle: &Path, mounts: &[Mount], spec: &ContainerSpec) -> Result<PathBuf, CoreError> {
    if mounts.is_empty() {
        // A prepared rootfs directory (ctr --rootfs).
        let root = spec.rootfs_in(bundle);
        if !root.is_dir() {
            return Err(CoreError::Invalid(format!("rootfs {} is not a directory", root.display())));
        }
        return Ok(root);
    }
    let target = bundle.join("rootfs");
    std::fs::create_dir_all(&target).map_err(|e| CoreError::Failed(format!("{}: {e}", target.display())))?;
    for m in mounts {
        containerd_shim::mount::mount_rootfs(Some(m.type_.as_str()), Some(m.source.as_str()), &m.options, &target)
            .map_err(|e| {
                CoreError::Failed(format!("mount rootfs ({} {}) on {}: {e}", m.type_, m.source, target.display()))
            })?;
    }
    Ok(target)
}

/// Undoes [`mount_rootfs`] when it mounted something.
pub fn unmount_rootfs(bundle: &Path) {
    let target = bundle.join("rootfs");
    if let Err(e) = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
        log::warn!("umount {}: {e}", target.display());
    }
}
