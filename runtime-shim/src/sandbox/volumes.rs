//! A container's bind mounts of host paths, made visible in the guest.
//!
//! The guest cannot see host paths, so each bind mount in the spec whose
//! source is a host directory or file (Kubernetes hostPath, emptyDir,
//! configMap/secret volumes, and CRI's own /etc/hosts, /etc/resolv.conf,
//! /etc/hostname and termination-log files) is bound into the sandbox's
//! shared directory at `<id>/mounts/<n>` and the spec's source rewritten to
//! that path under the guest's virtio-fs mount. Read-only mounts are also
//! made read-only on the host side of that bind, so a compromised guest
//! cannot write through virtiofsd either.
//!
//! Two kinds of source become guest-local tmpfs instead (as Kata's
//! "ephemeral" storage): the pod's `/dev/shm` (containerd's per-sandbox
//! tmpfs) and memory-backed emptyDir volumes (a tmpfs kubelet mounted under
//! `…/kubernetes.io~empty-dir/`). Their contents are the pod's own memory,
//! shared by its containers inside the VM; sending them over virtio-fs would
//! make shared memory a file-server round trip. Their size is the host
//! tmpfs's size (containerd's shm size, emptyDir's sizeLimit).

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kata_like_protocol::agent::Storage;
use kata_like_protocol::{GUEST_EPHEMERAL_ROOT, GUEST_SHARED_MOUNT};
use nix::mount::{mount, MsFlags};
use serde_json::Value;

/// The guest path a pod's /dev/shm binds from.
pub const GUEST_SHM: &str = "shm";

/// Whether `path` is the root of a host tmpfs mount.
fn tmpfs_mount_point(path: &Path) -> bool {
    let tmpfs = nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    tmpfs && super::rootfs::is_mount_root(path)
}

/// The size limit of the file system at `path`, in bytes.
fn fs_size(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path).map(|s| s.blocks() * s.fragment_size()).unwrap_or(0)
}

/// Whether a spec mount is a bind mount.
fn is_bind(m: &Value) -> bool {
    m.get("type").and_then(Value::as_str) == Some("bind") || has_option(m, "bind") || has_option(m, "rbind")
}

fn has_option(m: &Value, name: &str) -> bool {
    m.get("options").and_then(Value::as_array).is_some_and(|o| o.iter().any(|v| v.as_str() == Some(name)))
}

/// A guest-local tmpfs for `source` bound at `destination`, if it is one.
fn ephemeral(destination: &str, source: &Path) -> Option<Storage> {
    if !tmpfs_mount_point(source) {
        return None;
    }
    let name = if destination == "/dev/shm" {
        GUEST_SHM.to_string()
    } else if source.parent().is_some_and(|p| p.ends_with("kubernetes.io~empty-dir")) {
        let volume = source.file_name()?.to_string_lossy();
        format!("empty-dir-{}", volume.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"))
    } else {
        return None;
    };
    let mode = std::fs::metadata(source).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o1777);
    Some(Storage {
        mount_point: format!("{GUEST_EPHEMERAL_ROOT}/{name}"),
        size_bytes: fs_size(source),
        mode,
        ..Default::default()
    })
}

/// Binds `source` at `target` (created as a file or directory like the
/// source), read-only on the host side when `ro`.
fn bind_into(source: &Path, target: &Path, recursive: bool, ro: bool) -> Result<(), String> {
    let meta = std::fs::metadata(source).map_err(|e| format!("source {}: {e}", source.display()))?;
    if meta.is_dir() {
        std::fs::create_dir_all(target).map_err(|e| format!("{}: {e}", target.display()))?;
    } else if meta.is_file() {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::File::create(target).map_err(|e| format!("{}: {e}", target.display()))?;
    } else {
        let kind = if meta.file_type().is_socket() { "a socket" } else { "a device or pipe" };
        return Err(format!(
            "source {} is {kind}; only directories and regular files can be shared into the VM",
            source.display()
        ));
    }
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>)
        .map_err(|e| format!("bind {} to {}: {e}", source.display(), target.display()))?;
    if ro {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("make {} read-only: {e}", target.display()))?;
    }
    Ok(())
}

/// The mounts below `source` on the host (not `source` itself), shallow
/// first, each with whether it is read-only.
fn submounts(source: &Path) -> Vec<(PathBuf, bool)> {
    let mut found = crate::mountinfo::mounts_at_or_below(source);
    found.retain(|(point, _)| point != source);
    found.sort_by_key(|(p, _)| p.components().count());
    found.dedup_by(|a, b| a.0 == b.0);
    found
}

/// A read-only `rbind` is read-only at its top only (as mount(8)'s `ro`
/// on a recursive bind): submounts keep their own mode. In the guest the
/// whole host tree is one virtio-fs mount, so each host submount of
/// `source` becomes a bind of its own below `destination`, from its place
/// in the shared copy (`guest` in the guest). `rro` instead makes every
/// submount read-only, on the host side too.
fn split_submounts(
    source: &Path,
    target: &Path,
    guest: &str,
    destination: &str,
    rro: bool,
) -> Result<Vec<Value>, String> {
    let mut extra = Vec::new();
    for (point, ro) in submounts(source) {
        let Ok(rel) = point.strip_prefix(source) else { continue };
        if rro {
            mount(
                None::<&str>,
                &target.join(rel),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| format!("make submount {} read-only: {e}", point.display()))?;
            continue;
        }
        extra.push(serde_json::json!({
            "destination": Path::new(destination).join(rel),
            "type": "bind",
            "source": format!("{guest}/{}", rel.display()),
            "options": ["rbind", if ro { "ro" } else { "rw" }],
        }));
    }
    Ok(extra)
}

/// Rewrites the bind mounts of `spec` (container `id`) as the module doc
/// says, binding host sources into `shared`; returns the storages the guest
/// must set up first. On error, binds already made stay under
/// `shared/<id>` for the caller's usual clean-up of that directory.
pub fn share_mounts(spec: &mut Value, shared: &Path, id: &str) -> Result<Vec<Storage>, String> {
    let mut storages = Vec::new();
    let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) else {
        return Ok(storages);
    };
    let mut split = Vec::new();
    for (i, m) in mounts.iter_mut().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let destination = m.get("destination").and_then(Value::as_str).unwrap_or_default().to_string();
        let source = PathBuf::from(m.get("source").and_then(Value::as_str).unwrap_or_default());
        let what = format!("mounts[{i}] ({destination})");
        if !source.is_absolute() {
            return Err(format!("{what}: bind source {:?} must be an absolute host path", source.display()));
        }
        let guest = if let Some(storage) = ephemeral(&destination, &source) {
            let path = storage.mount_point.clone();
            storages.push(storage);
            path
        } else {
            let rel = format!("{id}/mounts/{i}");
            let (rbind, rro) = (has_option(m, "rbind"), has_option(m, "rro"));
            let target = shared.join(&rel);
            bind_into(&source, &target, rbind, has_option(m, "ro") || rro).map_err(|e| format!("{what}: {e}"))?;
            let guest = format!("{GUEST_SHARED_MOUNT}/{rel}");
            if rbind && (has_option(m, "ro") || rro) {
                let extra =
                    split_submounts(&source, &target, &guest, &destination, rro).map_err(|e| format!("{what}: {e}"))?;
                split.push((i, extra));
            }
            guest
        };
        m["source"] = Value::String(guest);
    }
    // Each submount right after its parent mount, last index first so the
    // earlier indices stay valid.
    for (i, extra) in split.into_iter().rev() {
        for (k, m) in extra.into_iter().enumerate() {
            mounts.insert(i + 1 + k, m);
        }
    }
    Ok(storages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(mounts: Value) -> Value {
        serde_json::json!({ "mounts": mounts })
    }

    #[test]
    fn non_bind_mounts_are_left_alone_and_bad_sources_are_named() {
        let shared = tempfile::tempdir().expect("tmp");
        let mut s = spec(serde_json::json!([{"destination":"/proc","type":"proc","source":"proc"}]));
        let before = s.clone();
        assert!(share_mounts(&mut s, shared.path(), "c1").expect("ok").is_empty());
        assert_eq!(s, before);

        let mut s = spec(serde_json::json!([{"destination":"/data","type":"bind","source":"relative/dir"}]));
        let err = share_mounts(&mut s, shared.path(), "c1").unwrap_err();
        assert!(err.contains("mounts[0] (/data)") && err.contains("absolute"), "{err}");

        let mut s = spec(serde_json::json!([{"destination":"/x","source":"/nonexistent/kl","options":["rbind"]}]));
        let err = share_mounts(&mut s, shared.path(), "c1").unwrap_err();
        assert!(err.contains("mounts[0] (/x)") && err.contains("/nonexistent/kl"), "{err}");
    }

    #[test]
    fn a_socket_source_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tmp");
        let sock = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let mut s = spec(serde_json::json!([{"destination":"/run/s.sock","type":"bind","source":sock}]));
        let err = share_mounts(&mut s, dir.path(), "c1").unwrap_err();
        assert!(err.contains("is a socket"), "{err}");
    }

    #[test]
    fn host_dirs_and_files_are_bound_into_the_shared_dir_read_only_when_asked() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: bind mounts need root");
            return;
        }
        let host = tempfile::tempdir().expect("tmp");
        let shared = tempfile::tempdir().expect("tmp");
        std::fs::write(host.path().join("hosts"), "127.0.0.1 localhost\n").expect("write");
        let mut s = spec(serde_json::json!([
            {"destination":"/etc/hosts","type":"bind","source":host.path().join("hosts"),"options":["rbind","ro"]},
            {"destination":"/data","type":"bind","source":host.path(),"options":["rbind","rw"]},
        ]));
        let result = share_mounts(&mut s, shared.path(), "c1");
        let file = shared.path().join("c1/mounts/0");
        let dir = shared.path().join("c1/mounts/1");
        let read = std::fs::read_to_string(&file);
        let write_ro = std::fs::write(&file, "x");
        let write_rw = std::fs::write(dir.join("new"), "y");
        crate::sandbox::rootfs::remove_dir_mounts(&shared.path().join("c1"));
        assert!(result.expect("ok").is_empty());
        assert_eq!(read.expect("read through the bind"), "127.0.0.1 localhost\n");
        assert!(write_ro.is_err(), "the read-only bind refused a write");
        write_rw.expect("the rw bind takes a write");
        assert_eq!(std::fs::read_to_string(host.path().join("new")).expect("on the host"), "y");
        assert_eq!(s["mounts"][0]["source"], format!("{GUEST_SHARED_MOUNT}/c1/mounts/0"));
        assert_eq!(s["mounts"][1]["source"], format!("{GUEST_SHARED_MOUNT}/c1/mounts/1"));
    }

    #[test]
    fn a_read_only_rbind_keeps_its_submounts_writable_and_rro_does_not() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let host = tempfile::tempdir().expect("tmp");
        let shared = tempfile::tempdir().expect("tmp");
        let sub = host.path().join("cache");
        std::fs::create_dir(&sub).expect("mkdir");
        mount(Some("t"), &sub, Some("tmpfs"), MsFlags::empty(), Some("size=1m")).expect("tmpfs");
        let mut s = spec(serde_json::json!([
            {"destination":"/mnt","type":"bind","source":host.path(),"options":["rbind","ro"]},
            {"destination":"/all-ro","type":"bind","source":host.path(),"options":["rbind","rro"]},
        ]));
        let result = share_mounts(&mut s, shared.path(), "c1");
        let write_rro = std::fs::write(shared.path().join("c1/mounts/1/cache/x"), "x");
        crate::sandbox::rootfs::remove_dir_mounts(&shared.path().join("c1"));
        let _ = nix::mount::umount(&sub);
        result.expect("ok");
        assert!(write_rro.is_err(), "rro made the submount read-only on the host");
        let mounts = s["mounts"].as_array().expect("mounts");
        assert_eq!(mounts.len(), 3, "{mounts:?}");
        assert_eq!(mounts[1]["destination"], "/mnt/cache");
        assert_eq!(mounts[1]["source"], format!("{GUEST_SHARED_MOUNT}/c1/mounts/0/cache"));
        assert_eq!(mounts[1]["options"], serde_json::json!(["rbind", "rw"]));
        assert_eq!(mounts[2]["destination"], "/all-ro");
    }

    #[test]
    fn a_pods_shm_becomes_a_guest_tmpfs_of_the_hosts_size() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let shm = dir.path().join("shm");
        std::fs::create_dir(&shm).expect("mkdir");
        mount(Some("shm"), &shm, Some("tmpfs"), MsFlags::empty(), Some("size=8m,mode=1777")).expect("tmpfs");
        let mut s =
            spec(serde_json::json!([{"destination":"/dev/shm","type":"bind","source":shm,"options":["rbind","rw"]}]));
        let storages = share_mounts(&mut s, dir.path(), "c1");
        let _ = nix::mount::umount(&shm);
        let storages = storages.expect("ok");
        assert_eq!(storages.len(), 1);
        assert_eq!(storages[0].mount_point, format!("{GUEST_EPHEMERAL_ROOT}/shm"));
        assert_eq!(storages[0].size_bytes, 8 << 20);
        assert_eq!(storages[0].mode, 0o1777);
        assert_eq!(s["mounts"][0]["source"], format!("{GUEST_EPHEMERAL_ROOT}/shm"));
    }
}
