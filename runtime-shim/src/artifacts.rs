//! Default locations of the guest artefacts and the VMM.
//!
//! `scripts/setup.sh` builds the kernel and initrd into the cache (keyed by
//! their inputs) and points `$KATA_LIKE_CACHE/artifacts/{vmlinux,initrd.cpio}`
//! at the current ones, and `.../artifacts/kata-like-vmm` at the static VMM;
//! `KATA_LIKE_CACHE` defaults to `~/.cache/kata-like`.

use std::path::PathBuf;

/// The cache directory.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KATA_LIKE_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".cache/kata-like")
    })
}

/// The current guest kernel.
pub fn default_kernel() -> PathBuf {
    cache_dir().join("artifacts/vmlinux")
}

/// The current guest initramfs.
pub fn default_initrd() -> PathBuf {
    cache_dir().join("artifacts/initrd.cpio")
}

/// The VMM scripts/build.sh installed (a link in the artefacts directory to
/// the static build, cached by content), else `kata-like-vmm` next to the
/// running executable, else from PATH.
pub fn default_vmm() -> PathBuf {
    let installed = cache_dir().join("artifacts/kata-like-vmm");
    let sibling = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("kata-like-vmm")));
    [Some(installed), sibling]
        .into_iter()
        .flatten()
        .find(|path| path.exists())
        .unwrap_or_else(|| "kata-like-vmm".into())
}

/// virtiofsd as installed by scripts/setup.sh (a link in the artefacts
/// directory to the version-keyed cache).
pub fn default_virtiofsd() -> PathBuf {
    cache_dir().join("artifacts/virtiofsd")
}
