//! VM templates (`vm_templates = true`, the default): sandboxes start by
//! restoring a snapshot of a booted guest whose agent is ready, instead of
//! booting.
//!
//! A template is keyed by everything the snapshot depends on: the VMM,
//! kernel and initramfs files (path, size, modification time), the
//! snapshot format version, vCPUs, memory, kernel parameters and the device
//! set (vsock, one virtio-fs device tagged `SHARED_TAG`, and for pods a NIC
//! slot). Changing any of them makes a new key, so a stale template is never
//! used; stale ones (a removed or rebuilt kernel, initramfs or VMM) are
//! swept away whenever a new template is built. Templates live in
//! `<template_dir>/<key>/` (default `<state_root>/templates`) with a
//! `template.json` naming their inputs and shape, and are created on first
//! use or with `kata-like snapshot create`, under a lock so concurrent first
//! sandboxes build one template, not several.
//!
//! The template VM is snapshotted before anything is mounted in the guest:
//! the virtio-fs device has rings but no FUSE session, so a restore can
//! attach it to the new sandbox's own virtiofsd.
//!
//! **Pods** (a NIC) restore a template with a NIC slot: a virtio-net device
//! with [`NIC_MAC`], booted on a throwaway tap in a network namespace of its
//! own and never brought up in the guest. The restore attaches the pod's tap
//! to that device (the VMM's `--net` of a restore names the new backend),
//! and ConfigureNetwork tells the agent to give the NIC the pod's MAC
//! (`new_mac`) before its name, MTU, addresses and routes; see
//! docs/design.md for why a slot rather than hot-plug. The slot's MTU (the
//! guest's maximum for that NIC) is part of the shape: 1500, or the pod's
//! when larger, so a jumbo-frame pod never gets a NIC it cannot configure
//! and a 1500 pod does not pay the guest's large receive buffers.
//!
//! Anything that goes wrong with a template (missing, unreadable, of
//! another shape, refused by the VMM) falls back to a cold boot, which is
//! always correct.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::RuntimeConfig;
use crate::vm::{NetDevice, SandboxVm, VmSpec, SHARED_TAG};

/// The MAC of a template's NIC slot (locally administered): a restored
/// guest finds its NIC by it and takes the pod's MAC.
pub const NIC_MAC: &str = "02:6b:6c:00:00:01";
/// The smallest NIC slot MTU (a pod's MTU up to it uses this slot).
pub const NIC_MTU: u32 = 1500;
/// In a template directory: what it was built from ([`Meta`]).
const META_FILE: &str = "template.json";

/// The VM a template holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub memory_mib: u32,
    /// A NIC slot of this MTU (pods), or none.
    pub nic_mtu: Option<u32>,
}

impl Shape {
    /// The configuration's default sandbox VM (no NIC).
    pub fn default_for(config: &RuntimeConfig) -> Shape {
        Shape { vcpus: config.vcpus, memory_mib: config.memory_mib, nic_mtu: None }
    }

    /// The configuration's default pod VM (a NIC slot of [`NIC_MTU`]).
    pub fn default_pod_for(config: &RuntimeConfig) -> Shape {
        Shape { nic_mtu: Some(NIC_MTU), ..Shape::default_for(config) }
    }

    /// The template shape for a VM of `vcpus` and `memory_mib` with, for a
    /// pod, a NIC of `pod_mtu`.
    pub fn for_vm(vcpus: u8, memory_mib: u32, pod_mtu: Option<u32>) -> Shape {
        Shape { vcpus, memory_mib, nic_mtu: pod_mtu.map(|mtu| mtu.max(NIC_MTU)) }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} vCPU, {} MiB, ", self.vcpus, self.memory_mib)?;
        match self.nic_mtu {
            Some(mtu) => write!(f, "NIC slot (MTU {mtu})"),
            None => write!(f, "no NIC"),
        }
    }
}

/// What a template was built from (`template.json`): enough to recompute
/// its key, so a template of a removed or rebuilt input can be found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    vmm: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    kernel_params: String,
    shape: Shape,
}

impl Meta {
    fn of(config: &RuntimeConfig, shape: &Shape) -> Meta {
        Meta {
            vmm: config.vmm.clone(),
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            kernel_params: config.kernel_params.clone(),
            shape: shape.clone(),
        }
    }

    fn read(dir: &Path) -> Result<Meta, String> {
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The template key of these inputs as the files are now.
    fn key(&self) -> Result<String, String> {
        let mut hasher = Sha256::new();
        file_identity(&mut hasher, "vmm", &self.vmm)?;
        file_identity(&mut hasher, "kernel", &self.kernel)?;
        file_identity(&mut hasher, "initrd", &self.initrd)?;
        let net = match self.shape.nic_mtu {
            Some(mtu) => format!("1:{mtu}"),
            None => "0".into(),
        };
        hasher.update(format!(
            "format={}\nvcpus={}\nmemory={}\nparams={}\nfs={SHARED_TAG}\nnet={net}\n",
            kata_like_vmm_contract::snapshot::FORMAT_VERSION,
            self.shape.vcpus,
            self.shape.memory_mib,
            self.kernel_params
        ));
        let digest = hasher.finalize();
        Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
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
    Meta::of(config, shape).key()
}

/// The directory `shape`'s template has (or would have) under `config`,
/// and whether a complete template is there.
pub fn find(config: &RuntimeConfig, shape: &Shape) -> Result<(PathBuf, bool), String> {
    let dir = root(config).join(key(config, shape)?);
    let exists = dir.join(kata_like_vmm_contract::snapshot::STATE_FILE).exists();
    Ok((dir, exists))
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
    let swept = sweep(&root);
    if swept > 0 {
        log::info!("removed {swept} stale VM template(s) from {}", root.display());
    }
    Ok((dir, true))
}

/// Checks that the template in `dir` holds a VM of `shape`: a template of
/// another shape (copied or renamed into place) is refused by name.
pub fn check(dir: &Path, shape: &Shape) -> Result<(), String> {
    let meta = Meta::read(dir)?;
    if meta.shape != *shape {
        return Err(format!("template {} holds a VM of {}; this sandbox needs {shape}", dir.display(), meta.shape));
    }
    Ok(())
}

/// The template of `shape` to restore ([`ensure`]d), unless it holds a
/// VM of another shape ([`check`]): then it is discarded and the error
/// says why.
pub fn usable(config: &RuntimeConfig, shape: &Shape) -> Result<PathBuf, String> {
    let (dir, _) = ensure(config, shape)?;
    check(&dir, shape).inspect_err(|_| discard(&dir))?;
    Ok(dir)
}

/// Boots a template VM and snapshots it into `dir` (via a build directory
/// renamed into place, so `dir` only ever holds a complete snapshot).
fn build(config: &RuntimeConfig, shape: &Shape, root: &Path, key: &str, dir: &Path) -> Result<(), String> {
    let work = root.join(format!("{key}.build"));
    let _ = std::fs::remove_dir_all(&work);
    let shared = work.join("shared");
    std::fs::create_dir_all(&shared).map_err(|e| format!("{}: {e}", shared.display()))?;
    let mut spec = VmSpec::for_sandbox(config, shape.vcpus, shape.memory_mib, work.join("vm"), shared);
    if let Some(mtu) = shape.nic_mtu {
        let tap = crate::network::detached_tap().map_err(|e| format!("template NIC slot: {e}"))?;
        spec.net = Some(NetDevice { tap: std::sync::Arc::new(tap), mac: NIC_MAC.into(), mtu });
    }
    let started = std::time::Instant::now();
    let result = SandboxVm::start(&spec).map_err(|e| format!("template VM: {e}")).and_then(|vm| {
        let snapshot = work.join("snapshot");
        let written = vm.snapshot(&snapshot).map_err(|e| format!("template snapshot: {e}"));
        drop(vm);
        written.map(|sizes| (snapshot, sizes))
    });
    let outcome = result.and_then(|(snapshot, (ram, data))| {
        let meta = serde_json::to_string_pretty(&Meta::of(config, shape)).map_err(|e| e.to_string())?;
        std::fs::write(snapshot.join(META_FILE), meta).map_err(|e| format!("{}: {e}", snapshot.display()))?;
        std::fs::rename(&snapshot, dir).map_err(|e| format!("{} -> {}: {e}", snapshot.display(), dir.display()))?;
        log::info!(
            "VM template {} ({shape}) created in {:?} ({} MiB of {} MiB RAM written)",
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

/// Removes the templates under `root` whose inputs are gone or changed
/// (their key, recomputed from `template.json`, is not their name) or that
/// have no readable `template.json`; returns how many.
pub fn sweep(root: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(root) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.join(kata_like_vmm_contract::snapshot::STATE_FILE).exists() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = match Meta::read(&dir).and_then(|meta| meta.key()) {
            Ok(key) if key == name => continue,
            Ok(_) => "its kernel, initramfs or VMM changed".to_string(),
            Err(e) => e,
        };
        log::info!("removing stale VM template {}: {stale}", dir.display());
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
            let _ = std::fs::remove_file(root.join(format!("{name}.lock")));
        }
    }
    removed
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
pub(crate) mod tests {
    use super::*;

    /// A config whose VMM, kernel and initrd are small files in `dir`.
    pub(crate) fn config_in(dir: &Path) -> RuntimeConfig {
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
        let pod = Shape::default_pod_for(&config);
        assert_ne!(key(&config, &pod).expect("key"), base, "a NIC slot is another device set");
        assert_ne!(
            key(&config, &Shape { nic_mtu: Some(9000), ..pod.clone() }).expect("key"),
            key(&config, &pod).unwrap()
        );
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
    fn pods_get_a_nic_slot_of_at_least_1500() {
        assert_eq!(Shape::for_vm(1, 128, None).nic_mtu, None);
        assert_eq!(Shape::for_vm(1, 128, Some(1450)).nic_mtu, Some(1500), "one template for common MTUs");
        assert_eq!(Shape::for_vm(1, 128, Some(9000)).nic_mtu, Some(9000), "a jumbo pod gets its own");
        assert_eq!(Shape::for_vm(2, 256, Some(1500)).to_string(), "2 vCPU, 256 MiB, NIC slot (MTU 1500)");
    }

    /// A fake template of `shape` under `config`, as `build` leaves one.
    fn fake_template(config: &RuntimeConfig, shape: &Shape) -> PathBuf {
        let (dir, _) = find(config, shape).expect("key");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(kata_like_vmm_contract::snapshot::STATE_FILE), "x").expect("write");
        let meta = serde_json::to_string(&Meta::of(config, shape)).expect("json");
        std::fs::write(dir.join(META_FILE), meta).expect("write");
        dir
    }

    #[test]
    fn a_template_of_another_shape_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = config_in(dir.path());
        let pod = Shape::default_pod_for(&config);
        let template = fake_template(&config, &pod);
        assert_eq!(find(&config, &pod).expect("find"), (template.clone(), true));
        check(&template, &pod).expect("its own shape");
        let err = check(&template, &Shape::default_for(&config)).expect_err("another shape");
        assert!(err.contains("holds a VM of 1 vCPU, 256 MiB, NIC slot (MTU 1500)"), "{err}");
        assert!(err.contains("needs 1 vCPU, 256 MiB, no NIC"), "{err}");
        std::fs::remove_file(template.join(META_FILE)).expect("rm");
        assert!(check(&template, &pod).expect_err("no metadata").contains(META_FILE));
    }

    #[test]
    fn templates_of_a_removed_or_rebuilt_kernel_are_swept() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = config_in(dir.path());
        let current = fake_template(&config, &Shape::default_for(&config));
        let old_kernel = dir.path().join("old-vmlinux");
        std::fs::write(&old_kernel, "old").expect("write");
        let of_removed = fake_template(
            &RuntimeConfig { kernel: old_kernel.clone(), ..config.clone() },
            &Shape::default_pod_for(&config),
        );
        let rebuilt = fake_template(&config, &Shape::default_pod_for(&config));
        let unknown = root(&config).join("0123456789abcdef");
        std::fs::create_dir_all(&unknown).expect("mkdir");
        std::fs::write(unknown.join(kata_like_vmm_contract::snapshot::STATE_FILE), "x").expect("write");
        let building = root(&config).join("0123456789abcdef.build");
        std::fs::create_dir_all(&building).expect("mkdir");
        assert_eq!(sweep(&root(&config)), 1, "only the template without metadata");
        assert!(!unknown.exists());
        std::fs::remove_file(&old_kernel).expect("rm");
        std::fs::write(&config.initrd, "a rebuilt initrd").expect("rewrite");
        // The default-shape template was made with the old initrd too.
        let fresh = fake_template(&config, &Shape::default_for(&config));
        assert_eq!(sweep(&root(&config)), 3);
        assert!(!of_removed.exists() && !rebuilt.exists() && !current.exists());
        assert!(fresh.exists() && building.exists(), "current templates and builds in progress stay");
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
