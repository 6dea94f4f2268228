//! Host-side mounts of a sandbox: the shared directory virtiofsd exports
//! (a shared mount, so rootfs mounted later propagate into virtiofsd's
//! mount namespace) and each container's rootfs under it.

use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Makes `dir` a shared bind mount of itself.
pub fn make_shared_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("bind {}: {e}", dir.display()))?;
    mount(None::<&str>, dir, None::<&str>, MsFlags::MS_SHARED, None::<&str>)
        .map_err(|e| format!("make {} shared: {e}", dir.display()))
}

/// Mount points at or below `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let mut targets: Vec<String> =
        crate::mountinfo::mounts_at_or_below(dir).into_iter().map(|(point, _)| point.display().to_string()).collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    targets
}

/// Whether `path` is the root of a mount (statx STATX_ATTR_MOUNT_ROOT, which
/// also sees binds within one file system).
pub fn is_mount_root(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return true };
    // SAFETY: an all-zero statx is a valid value for the kernel to fill.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `stx` a writable statx,
    // both alive for the call.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), libc::AT_SYMLINK_NOFOLLOW, 0, &mut stx) };
    // Unknown (error): treat as a mount, so we never delete through it.
    r != 0 || stx.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0
}

/// Removes the tree at `dir` without ever crossing into a mount: shared
/// directories hold binds of host data (hostPath volumes, rootfs), and a
/// bind whose unmount failed must keep its contents. What cannot be
/// removed is left and logged.
pub fn remove_tree(dir: &Path) {
    fn walk(path: &Path) {
        if is_mount_root(path) {
            log::warn!("left {}: still a mount point", path.display());
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(path) else { return };
        if meta.is_dir() {
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                walk(&entry.path());
            }
            if let Err(e) = std::fs::remove_dir(path) {
                log::warn!("remove {}: {e}", path.display());
            }
        } else if let Err(e) = std::fs::remove_file(path) {
            log::warn!("remove {}: {e}", path.display());
        }
    }
    if std::fs::symlink_metadata(dir).is_err() {
        return;
    }
    if is_mount_root(dir) {
        log::warn!("left {}: still mounted", dir.display());
        return;
    }
    walk(dir);
}

/// Unmounts everything at and below `dir` (lazily) and removes it.
pub fn remove_dir_mounts(dir: &Path) {
    for t in mounts_under(dir) {
        if let Err(e) = umount2(t.as_str(), MntFlags::MNT_DETACH) {
            log::warn!("umount {t}: {e}");
        }
    }
    remove_tree(dir);
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

/// Undoes [`share_rootfs`] and every volume shared for container `id`.
pub fn unshare_container(shared: &Path, id: &str) {
    remove_dir_mounts(&shared.join(id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_tree_never_deletes_through_a_bind() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: bind mounts need root");
            return;
        }
        let host = tempfile::tempdir().expect("tmp");
        std::fs::write(host.path().join("precious"), "data").expect("write");
        let tree = tempfile::tempdir().expect("tmp");
        let target = tree.path().join("c1/mounts/0");
        std::fs::create_dir_all(&target).expect("mkdir");
        std::fs::write(tree.path().join("c1/file"), "x").expect("write");
        mount(Some(host.path()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>).expect("bind");
        // As if its unmount had failed: the bind is still there.
        remove_tree(&tree.path().join("c1"));
        let kept = std::fs::read_to_string(host.path().join("precious"));
        let _ = umount2(&target, MntFlags::MNT_DETACH);
        assert_eq!(kept.expect("host data survives"), "data");
        assert!(!tree.path().join("c1/file").exists(), "the rest was removed");
        remove_dir_mounts(&tree.path().join("c1"));
        assert!(!tree.path().join("c1").exists());
    }
}
