//! VM templates (`vm_templates = true`): sandboxes start by restoring a
//! snapshot of a booted guest whose agent is ready, instead of booting.
//!
//! A template is keyed by everything the snapshot depends on: the VMM,
//! kernel and initramfs files (path, size, modification time), the
//! snapshot format version, vCPUs, memory, kernel parameters and the device
//! set (vsock plus one virtio-fs device tagged `SHARED_TAG`; no NIC).
//! Changing any of them makes a new key, so a stale template is never
//! used. Templates live in `<template_dir>/<key>/` (default
//! `<state_root>/templates`) and are created on first use or with
//! `kata-like snapshot create`, under a lock so concurrent first sandboxes
//! build one template, not several.
//!
//! The template VM is snapshotted before anything is mounted in the guest:
//! the virtio-fs device has rings but no FUSE session, so a restore can
//! attach it to the new sandbox's own virtiofsd. Sandboxes with a pod NIC
//! boot cold (a restored guest's NIC would keep the template's MAC).
//! Anything that goes wrong with a template (missing, unreadable, refused by
//! the VMM) falls back to a cold boot, which is always correct.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::RuntimeConfig;
use crate::vm::{SandboxVm, VmSpec, SHARED_TAG};

/// The VM a template holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub memory_mib: u32,
}

impl Shape {
    /// The configuration's default sandbox VM.
    pub fn default_for(config: &RuntimeConfig) -> Shape {
        Shape { vcpus: config.vcpus, memory_mib: config.memory_mib }
    }
}

/// Where templates live.
pub fn root(config: &RuntimeConfig) -> PathBuf {
    config.template_dir.clone().unwrap_or_else(|| config.state_root.join("templates"))
}

fn file_identity(hasher: &mut Sha256, what: &str, path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    hasher.update(format!("{what}={}:{}:{}\n", canonical.display(), meta.len(), mtime.as_nanos()));
    Ok(())
}

/// The template key of `shape` under `config`.
pub fn key(config: &RuntimeConfig, shape: &Shape) -> Result<String, String> {
    let mut hasher = Sha256::new();
    file_identity(&mut hasher, "vmm", &config.vmm)?;
    file_identity(&mut hasher, "kernel", &config.kernel)?;
    file_identity(&mut hasher, "initrd", &config.initrd)?;
    hasher.update(format!(
        "format={}\nvcpus={}\nmemory={}\nparams={}\nfs={SHARED_TAG}\nnet=0\n",
        kata_like_vmm_contract::snapshot::FORMAT_VERSION,
        shape.vcpus,
        shape.memory_mib,
        config.kernel_params
    ));
    let digest = hasher.finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The template directory for `shape`, created (cold boot + snapshot) if
/// there is none yet. Returns the directory and whether it was created now.
pub fn ensure(config: &RuntimeConfig, shape: &Shape) -> Result<(PathBuf, bool), String> {
    let root = root(config);
    let key = key(config, shape)?;
    let dir = root.join(&key);
    if dir.join(kata_like_vmm_contract::snapshot::STATE_FILE).exists() {
        return Ok((dir, false));
    }
    std::fs::create_dir_all(&root).map_err(|e| format!("template directory {}: {e}", root.display()))?;
    let lock_path = root.join(format!("{key}.lock"));
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
    // Blocks while another process builds this template (one boot).
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("locking {}: {e}", lock_path.display()))?;
    if dir.join(kata_like_vmm_contract::snapshot::STATE_FILE).exists() {
        return Ok((dir, false));
    }
    build(config, shape, &root, &key, &dir)?;
    Ok((dir, true))
}

/// Boots a template VM and snapshots it into `dir` (via a build directory
/// renamed into place, so `dir` only ever holds a complete snapshot).
fn build(config: &RuntimeConfig, shape: &Shape, root: &Path, key: &str, dir: &Path) -> Result<(), String> {
    let work = root.join(format!("{key}.build"));
    let _ = std::fs::remove_dir_all(&work);
    let shared = work.join("shared");
    std::fs::create_dir_all(&shared).map_err(|e| format!("{}: {e}", shared.display()))?;
    let spec = VmSpec::for_sandbox(config, shape.vcpus, shape.memory_mib, work.join("vm"), shared);
    let started = std::time::Instant::now();
    let result = SandboxVm::start(&spec).map_err(|e| format!("template VM: {e}")).and_then(|vm| {
        let snapshot = work.join("snapshot");
        let written = vm.snapshot(&snapshot).map_err(|e| format!("template snapshot: {e}"));
        drop(vm);
        written.map(|sizes| (snapshot, sizes))
    });
    let outcome = result.and_then(|(snapshot, (ram, data))| {
        std::fs::rename(&snapshot, dir).map_err(|e| format!("{} -> {}: {e}", snapshot.display(), dir.display()))?;
        log::info!(
            "VM template {} created in {:?} ({} MiB of {} MiB RAM written)",
            dir.display(),
            started.elapsed(),
            data >> 20,
            ram >> 20
        );
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&work);
    outcome
}

/// Removes a template the VMM refused, so the next sandbox builds a new one.
pub fn discard(dir: &Path) {
    log::warn!("discarding VM template {}", dir.display());
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes every template (`kata-like snapshot clear`); returns how many.
pub fn clear(config: &RuntimeConfig) -> Result<usize, String> {
    let root = root(config);
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(format!("{}: {e}", root.display())),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.join(kata_like_vmm_contract::snapshot::STATE_FILE).exists() {
            std::fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_in(dir: &Path) -> RuntimeConfig {
        let mut config = RuntimeConfig::default();
        for (name, field) in [("vmm", &mut config.vmm), ("vmlinux", &mut config.kernel), ("initrd", &mut config.initrd)]
        {
            let path = dir.join(name);
            std::fs::write(&path, name).expect("write");
            *field = path;
        }
        config.state_root = dir.join("state");
        config
    }

    #[test]
    fn keys_change_with_every_input() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = config_in(dir.path());
        let shape = Shape::default_for(&config);
        let base = key(&config, &shape).expect("key");
        assert_eq!(base.len(), 16);
        assert_eq!(key(&config, &shape).expect("key"), base, "stable");
        assert_ne!(key(&config, &Shape { memory_mib: 512, ..shape.clone() }).expect("key"), base);
        assert_ne!(key(&config, &Shape { vcpus: 2, ..shape.clone() }).expect("key"), base);
        let mut params = config.clone();
        params.kernel_params = "debug".into();
        assert_ne!(key(&params, &shape).expect("key"), base);
        std::fs::write(&config.initrd, "a new initrd").expect("rewrite");
        assert_ne!(key(&config, &shape).expect("key"), base, "a rebuilt initrd is a new template");
        let mut missing = config.clone();
        missing.kernel = dir.path().join("nope");
        assert!(key(&missing, &shape).expect_err("missing kernel").contains("kernel"));
    }

    #[test]
    fn clear_removes_only_complete_templates() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = config_in(dir.path());
        let root = root(&config);
        std::fs::create_dir_all(root.join("a")).expect("mkdir");
        std::fs::write(root.join("a").join("state"), "x").expect("write");
        std::fs::create_dir_all(root.join("unrelated")).expect("mkdir");
        assert_eq!(clear(&config).expect("clear"), 1);
        assert!(root.join("unrelated").exists());
        assert_eq!(clear(&RuntimeConfig { template_dir: Some(dir.path().join("none")), ..config }).expect("ok"), 0);
    }
}
