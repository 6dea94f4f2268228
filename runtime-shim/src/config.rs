//! The runtime configuration file (TOML), shared by the shim and the CLI.
//!
//! Looked up at the path from containerd's runtime options (`ConfigPath`),
//! else `$KATA_LIKE_CONFIG`, else [`DEFAULT_PATH`]; a missing default file
//! means built-in defaults, which work after `scripts/setup.sh`. A path that
//! was asked for explicitly must exist.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the configuration is read from by default.
pub const DEFAULT_PATH: &str = "/etc/kata-like/configuration.toml";

/// The user and group a jailed VMM runs as unless configured: a dedicated
/// id far from those of users, services and user-namespace ranges.
pub const DEFAULT_JAIL_ID: u32 = 2_147_483_646;

/// Our own VM-size annotations, honoured only when the configuration lists
/// them in `enable_annotations`.
pub const VM_MEMORY_ANNOTATION: &str = "io.kata-like.vm.memory_mib";
/// See [`VM_MEMORY_ANNOTATION`].
pub const VM_VCPUS_ANNOTATION: &str = "io.kata-like.vm.vcpus";

/// The configuration.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `kata-like-vmm` binary.
    pub vmm: PathBuf,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs (agent as /init).
    pub initrd: PathBuf,
    /// vCPUs per sandbox.
    pub vcpus: u8,
    /// Guest memory per sandbox, MiB.
    pub memory_mib: u32,
    /// Kernel parameters appended to the VMM's defaults.
    pub kernel_params: String,
    /// virtiofsd binary.
    pub virtiofsd: PathBuf,
    /// virtiofsd `--cache` mode: auto, always, never (see docs/design.md).
    pub virtiofsd_cache: String,
    /// More virtiofsd arguments.
    pub virtiofsd_args: Vec<String>,
    /// More `kata-like-vmm` arguments, for debugging (e.g.
    /// `["--profile-rip=/run/p.txt"]` with `jail = false`).
    pub vmm_args: Vec<String>,
    /// Seconds from VMM start until the agent must answer.
    pub boot_timeout_secs: u64,
    /// Seconds an agent RPC may take (long polls excepted).
    pub rpc_timeout_secs: u64,
    /// How many sandbox VMs may boot at once under this `state_root`; the
    /// others wait for a slot (see `boot_slots`). Unset: the host's CPU
    /// count. 0: no limit.
    pub max_concurrent_boots: Option<u32>,
    /// Seconds a sandbox may wait for a boot slot before its start fails.
    pub boot_queue_timeout_secs: u64,
    /// Where per-sandbox state (sockets, logs, the shared directory) lives.
    pub state_root: PathBuf,
    /// MiB added to a pod's memory limit for the guest kernel and agent,
    /// when containerd passes the pod's resources (containerd ≥ 1.7).
    pub memory_overhead_mib: u32,
    /// Largest VM a pod may ask for.
    pub max_memory_mib: u32,
    /// See `max_memory_mib`.
    pub max_vcpus: u8,
    /// `io.kata-like.vm.*` annotations pods may use to size their VM.
    pub enable_annotations: Vec<String>,
    /// Start sandboxes (pods included) by restoring a snapshot of a booted
    /// guest of their shape (a VM template, created on first use) instead of
    /// booting; default true. A template that cannot be used falls back to a
    /// cold boot. `false`: every sandbox boots cold.
    pub vm_templates: bool,
    /// Where VM templates are kept (default: `<state_root>/templates`).
    pub template_dir: Option<PathBuf>,
    /// Give each VM a virtio-balloon with free page reporting, so memory
    /// its guest frees goes back to the host; default true. The balloon
    /// never asks the guest for memory (docs/design.md, "Template memory").
    pub balloon: bool,
    /// Jail each VMM once its VM is built: own mount, network, IPC and UTS
    /// namespaces, a root holding only its own directory, no capabilities,
    /// running as `jail_uid`/`jail_gid` (docs/security.md). Needs root.
    pub jail: bool,
    /// The user a jailed VMM runs as.
    pub jail_uid: u32,
    /// The group a jailed VMM runs as.
    pub jail_gid: u32,
    /// The VMM's seccomp filters: "trap" (a forbidden system call stops the
    /// VM, naming the call), "log" (allowed, logged by the kernel) or "off".
    pub vmm_seccomp: String,
    /// Size cap of a sandbox's guest console log; past it the log restarts
    /// with the newest output (a guest must not fill the host's disk).
    pub console_limit_bytes: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            vmm: crate::artifacts::default_vmm(),
            kernel: crate::artifacts::default_kernel(),
            initrd: crate::artifacts::default_initrd(),
            vcpus: 1,
            memory_mib: 256,
            kernel_params: String::new(),
            virtiofsd: crate::artifacts::default_virtiofsd(),
            virtiofsd_cache: "auto".into(),
            virtiofsd_args: Vec::new(),
            vmm_args: Vec::new(),
            boot_timeout_secs: 180,
            rpc_timeout_secs: 60,
            max_concurrent_boots: None,
            boot_queue_timeout_secs: 1800,
            state_root: PathBuf::from("/run/kata-like"),
            memory_overhead_mib: 128,
            max_memory_mib: 16384,
            max_vcpus: 16,
            enable_annotations: Vec::new(),
            vm_templates: true,
            template_dir: None,
            balloon: true,
            jail: true,
            jail_uid: DEFAULT_JAIL_ID,
            jail_gid: DEFAULT_JAIL_ID,
            vmm_seccomp: "trap".into(),
            console_limit_bytes: kata_like_vmm_contract::args::DEFAULT_SERIAL_LIMIT,
        }
    }
}

/// A configuration that cannot be used; names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("kata-like config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse or has a bad value.
    #[error("kata-like config {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl RuntimeConfig {
    /// Loads `explicit` (must exist), else `$KATA_LIKE_CONFIG` (must exist),
    /// else [`DEFAULT_PATH`] if present, else the defaults.
    pub fn load(explicit: Option<&Path>) -> Result<RuntimeConfig, ConfigError> {
        let env = std::env::var_os("KATA_LIKE_CONFIG").filter(|v| !v.is_empty()).map(PathBuf::from);
        match explicit.map(Path::to_path_buf).or(env) {
            Some(path) => Self::from_file(&path),
            None if Path::new(DEFAULT_PATH).exists() => Self::from_file(Path::new(DEFAULT_PATH)),
            None => Ok(RuntimeConfig::default()),
        }
    }

    /// Reads and checks one file.
    pub fn from_file(path: &Path) -> Result<RuntimeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let invalid = |reason: String| ConfigError::Invalid { path: path.into(), reason };
        let config: RuntimeConfig = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Range checks.
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpus == 0 || self.vcpus > 32 {
            return Err(format!("vcpus must be 1..=32, got {}", self.vcpus));
        }
        if self.max_vcpus == 0 || self.max_vcpus > 32 || self.max_memory_mib < self.memory_mib {
            return Err(format!(
                "max_vcpus must be 1..=32 and max_memory_mib at least memory_mib, got {} and {}",
                self.max_vcpus, self.max_memory_mib
            ));
        }
        for a in &self.enable_annotations {
            if a != VM_MEMORY_ANNOTATION && a != VM_VCPUS_ANNOTATION {
                return Err(format!("enable_annotations: unknown annotation {a:?}"));
            }
        }
        if self.memory_mib < 64 {
            return Err(format!("memory_mib must be at least 64, got {}", self.memory_mib));
        }
        if !matches!(self.virtiofsd_cache.as_str(), "auto" | "always" | "never" | "metadata") {
            return Err(format!(
                "virtiofsd_cache must be auto, always, never or metadata, got {:?}",
                self.virtiofsd_cache
            ));
        }
        if self.boot_timeout_secs == 0 || self.rpc_timeout_secs == 0 {
            return Err("boot_timeout_secs and rpc_timeout_secs must be positive".into());
        }
        if !matches!(self.vmm_seccomp.as_str(), "trap" | "log" | "off") {
            return Err(format!("vmm_seccomp must be trap, log or off, got {:?}", self.vmm_seccomp));
        }
        if self.console_limit_bytes < 4096 {
            return Err(format!("console_limit_bytes must be at least 4096, got {}", self.console_limit_bytes));
        }
        if self.jail && (self.jail_uid == 0 || self.jail_gid == 0) {
            return Err("jail_uid and jail_gid must not be 0: a jailed VMM runs unprivileged".into());
        }
        Ok(())
    }

    /// The boot timeout.
    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_secs)
    }

    /// How many VMs may boot at once (0: no limit).
    pub fn max_concurrent_boots(&self) -> u32 {
        self.max_concurrent_boots.unwrap_or_else(|| {
            std::thread::available_parallelism().map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX)).unwrap_or(1)
        })
    }

    /// How long a boot may wait for a slot.
    pub fn boot_queue_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_queue_timeout_secs)
    }

    /// The RPC timeout.
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_secs(self.rpc_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().expect("tmp");
        f.write_all(text.as_bytes()).expect("write");
        f
    }

    #[test]
    fn partial_files_keep_defaults() {
        let f = file("vcpus = 2\nmemory_mib = 512\nvirtiofsd_cache = \"never\"\n");
        let c = RuntimeConfig::from_file(f.path()).expect("config");
        assert_eq!((c.vcpus, c.memory_mib, c.virtiofsd_cache.as_str()), (2, 512, "never"));
        assert_eq!(c.state_root, RuntimeConfig::default().state_root);
        assert!(c.max_concurrent_boots() >= 1, "defaults to the CPU count");
        let f = file("max_concurrent_boots = 0\n");
        assert_eq!(RuntimeConfig::from_file(f.path()).expect("config").max_concurrent_boots(), 0);
    }

    #[test]
    fn bad_files_are_named_with_the_problem() {
        let f = file("vcpu = 2\n");
        let err = RuntimeConfig::from_file(f.path()).unwrap_err().to_string();
        assert!(err.contains(&f.path().display().to_string()) && err.contains("vcpu"), "{err}");
        let f = file("virtiofsd_cache = \"sometimes\"\n");
        assert!(RuntimeConfig::from_file(f.path()).unwrap_err().to_string().contains("virtiofsd_cache"));
        let err = RuntimeConfig::load(Some(Path::new("/nonexistent/kl.toml"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/kl.toml"), "{err}");
    }
}
