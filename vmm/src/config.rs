//! The VM configuration: a small struct built from CLI flags or read from a
//! JSON or TOML file, then turned into a running VM by [`crate::Vmm::build`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::cpuid::CpuTemplate;
use crate::arch::x86_64::layout::MIN_MEMORY_MIB;
use crate::arch::x86_64::mptable::MAX_CPUS;
use crate::devices::serial::SerialOutput;

/// Kernel parameters every kata-like guest gets unless the config replaces
/// them. The VMM appends the device parameters (virtio-mmio devices, boot
/// timer address, `clearcpuid=` where KVM ignores the CPU template) itself.
///
/// * `reboot=k panic=-1`: reset through the i8042 on reboot and on panic,
///   which ends the VMM.
/// * `quiet`: every console byte is an I/O exit and emulated driver work on
///   nested hosts.
/// * `8250.nr_uarts=1`: probe only COM1.
/// * `tsc=reliable no_timer_check`: no clocksource watchdog or IO-APIC
///   timer check (kvm-clock is the clocksource).
/// * `percpu_alloc=page`: the default embedding allocator clears a 2 MiB
///   unit per CPU (1.8 s emulated); page-by-page allocates what is used.
/// * `noreplace-smp`: keep LOCK prefixes instead of patching thousands of
///   them out through text_poke on a single-vCPU guest (3 s emulated).
/// * `slub_nosysfs module_nosysfs`: skip /sys/kernel/slab and
///   /sys/module/*/parameters (9 s emulated; guest-kernel/patches).
/// * `rcupdate.rcu_expedited=1`: no waiting for normal RCU grace periods.
/// * `rootfstype=ramfs retain_initrd rodata=off`: unpack the initramfs into
///   ramfs rather than shmem, keep the initrd instead of poisoning and
///   freeing it page by page, and leave kernel text writable rather than
///   splitting and re-protecting the direct map: 8 s of emulated boot
///   together (median of interleaved runs, docs/benchmarks.md). The guest
///   keeps 3.6 MiB of initrd; the VM, not the guest kernel, is the boundary.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet 8250.nr_uarts=1 tsc=reliable no_timer_check \
percpu_alloc=page noreplace-smp slub_nosysfs module_nosysfs rcupdate.rcu_expedited=1 \
rootfstype=ramfs retain_initrd rodata=off";

/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u32 = 128;
/// Largest guest memory accepted.
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// Most virtio-fs devices one VM takes.
pub const MAX_FS_DEVICES: usize = 8;
/// Most virtio-net devices one VM takes.
pub const MAX_NET_DEVICES: usize = 4;
/// Default guest CID.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// The vsock device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Unix socket for host-initiated connections (`CONNECT <port>`);
    /// guest-initiated connections to port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// The guest's context ID (3 or more).
    #[serde(default = "default_cid")]
    pub guest_cid: u64,
}

pub use kata_like_vmm_contract::{FsConfig, NetConfig};

fn default_cid() -> u64 {
    DEFAULT_GUEST_CID
}

fn default_serial_limit() -> u64 {
    crate::devices::serial::DEFAULT_FILE_LIMIT
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_string()
}

fn default_vcpus() -> u8 {
    1
}

fn default_memory() -> u32 {
    DEFAULT_MEMORY_MIB
}

/// A whole VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Uncompressed ELF vmlinux (PVH) or bzImage.
    pub kernel: PathBuf,
    /// Initramfs (newc cpio, optionally gzip-compressed).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (without device parameters).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// The vsock device, if any.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices (each served by a virtiofsd through shadow rings).
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// virtio-net devices.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// A virtio-balloon for free page reporting: memory the guest frees
    /// goes back to the host.
    #[serde(default)]
    pub balloon: bool,
    /// CPUID template.
    #[serde(default)]
    pub cpu_template: CpuTemplate,
    /// Where the guest console goes: `stdout`, `null` or a file path.
    #[serde(default)]
    pub serial: SerialOutput,
    /// Size cap of a console file: past it the file restarts with the
    /// newest output (a guest must not fill the host's disk).
    #[serde(default = "default_serial_limit")]
    pub serial_limit_bytes: u64,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("config file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// A value is out of range.
    #[error("invalid VM config: {0}")]
    Invalid(String),
}

impl VmConfig {
    /// A config with defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            balloon: false,
            cpu_template: CpuTemplate::default(),
            serial: SerialOutput::default(),
            serial_limit_bytes: default_serial_limit(),
        }
    }

    /// Reads a config file: TOML if it ends in `.toml`, JSON otherwise.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let parse_err = |reason: String| ConfigError::Parse { path: path.to_path_buf(), reason };
        let config: VmConfig = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?
        } else {
            serde_json::from_str(&text).map_err(|e| parse_err(e.to_string()))?
        };
        Ok(config)
    }

    /// Checks ranges that do not need the files themselves.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        if self.vcpus == 0 || self.vcpus > MAX_CPUS {
            return invalid(format!("vcpus must be between 1 and {MAX_CPUS}, got {}", self.vcpus));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return invalid(format!(
                "memory_mib must be at least {MIN_MEMORY_MIB} (the kernel loads at 16 MiB), got {}",
                self.memory_mib
            ));
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return invalid(format!("memory_mib must be at most {MAX_MEMORY_MIB}, got {}", self.memory_mib));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 || vsock.guest_cid > u64::from(u32::MAX) {
                return invalid(format!("vsock guest_cid must be between 3 and {}, got {}", u32::MAX, vsock.guest_cid));
            }
            if vsock.uds_path.as_os_str().is_empty() {
                return invalid("vsock uds_path is empty".into());
            }
        }
        // Slot 0 is vsock, then fs devices, then net devices.
        if self.fs.len() > MAX_FS_DEVICES {
            return invalid(format!("at most {MAX_FS_DEVICES} fs devices, got {}", self.fs.len()));
        }
        for (i, fs) in self.fs.iter().enumerate() {
            if fs.tag.is_empty() || fs.tag.len() > crate::devices::virtio::fs::TAG_LEN {
                return invalid(format!("fs[{i}].tag {:?} must be 1 to 36 bytes", fs.tag));
            }
            if self.fs[..i].iter().any(|other| other.tag == fs.tag) {
                return invalid(format!("fs[{i}].tag {:?} is used twice", fs.tag));
            }
            if fs.socket.as_os_str().is_empty() {
                return invalid(format!("fs[{i}].socket is empty"));
            }
        }
        if self.net.len() > MAX_NET_DEVICES {
            return invalid(format!("at most {MAX_NET_DEVICES} net devices, got {}", self.net.len()));
        }
        for (i, net) in self.net.iter().enumerate() {
            match (&net.tap, net.tap_fd) {
                (Some(_), None) => {}
                (None, Some(fd)) if fd > 2 => {}
                (None, Some(fd)) => return invalid(format!("net[{i}].tap_fd {fd} is a standard stream")),
                _ => return invalid(format!("net[{i}] needs exactly one of tap and tap_fd")),
            }
            let Some(mac) = crate::devices::virtio::net::parse_mac(&net.mac) else {
                return invalid(format!("net[{i}].mac {:?} is not aa:bb:cc:dd:ee:ff", net.mac));
            };
            if mac[0] & 1 != 0 {
                return invalid(format!("net[{i}].mac {} is a multicast address", net.mac));
            }
            if self.net[..i].iter().any(|other| other.mac.eq_ignore_ascii_case(&net.mac)) {
                return invalid(format!("net[{i}].mac {} is used twice", net.mac));
            }
        }
        if self.cmdline.contains('\n') {
            return invalid("cmdline must be one line".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(ext: &str, text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(ext).tempfile().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    #[test]
    fn json_and_toml_give_the_same_config() {
        let json = write(
            ".json",
            r#"{"kernel": "/k", "initrd": "/i", "vcpus": 2, "memory_mib": 256,
            "vsock": {"uds_path": "/tmp/v.sock"}, "cpu_template": "host", "serial": "/tmp/console.log"}"#,
        );
        let toml = write(".toml", "kernel = \"/k\"\ninitrd = \"/i\"\nvcpus = 2\nmemory_mib = 256\ncpu_template = \"host\"\nserial = \"/tmp/console.log\"\n[vsock]\nuds_path = \"/tmp/v.sock\"\n");
        let a = VmConfig::from_file(json.path()).expect("json");
        let b = VmConfig::from_file(toml.path()).expect("toml");
        assert_eq!(a, b);
        assert_eq!(a.vsock.as_ref().map(|v| v.guest_cid), Some(3));
        assert_eq!(a.cmdline, DEFAULT_CMDLINE);
        assert_eq!(a.serial, SerialOutput::File("/tmp/console.log".into()));
        a.validate().expect("valid");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_named() {
        let typo = write(".json", r#"{"kernel": "/k", "memory": 128}"#);
        let err = VmConfig::from_file(typo.path()).unwrap_err();
        assert!(err.to_string().contains("memory"), "{err}");

        let mut config = VmConfig::new("/k");
        config.memory_mib = 8;
        assert!(config.validate().unwrap_err().to_string().contains("memory_mib"));
        config.memory_mib = 128;
        config.vcpus = 0;
        assert!(config.validate().unwrap_err().to_string().contains("vcpus"));
        config.vcpus = 1;
        config.vsock = Some(VsockConfig { uds_path: "/x".into(), guest_cid: 2 });
        assert!(config.validate().unwrap_err().to_string().contains("guest_cid"));
        config.vsock = None;
        config.fs = vec!["a=/s".parse().expect("fs"), "a=/t".parse().expect("fs")];
        assert!(config.validate().unwrap_err().to_string().contains("used twice"));
        config.fs = vec![FsConfig { tag: "x".repeat(37), socket: "/s".into() }];
        assert!(config.validate().unwrap_err().to_string().contains("fs[0].tag"));
        assert!("nosocket".parse::<FsConfig>().unwrap_err().contains("TAG=SOCKET"));
    }

    #[test]
    fn net_devices_parse_and_bad_ones_are_named() {
        let net: NetConfig = "tap=tap0,mac=02:00:0a:58:00:2f,mtu=1450".parse().expect("net");
        assert_eq!((net.tap.as_deref(), net.tap_fd, net.mtu), (Some("tap0"), None, Some(1450)));
        let by_fd: NetConfig = "fd=7,mac=02:00:0a:58:00:30".parse().expect("net");
        assert_eq!(by_fd.tap_fd, Some(7));
        assert!("tap=t,speed=10".parse::<NetConfig>().unwrap_err().contains("unknown key \"speed\""));
        assert!("fd=x,mac=02:00:00:00:00:01".parse::<NetConfig>().unwrap_err().contains("not a number"));

        let mut config = VmConfig::new("/k");
        config.net = vec![net.clone(), by_fd];
        config.validate().expect("valid");
        let checks = [
            ("tap=a,fd=5,mac=02:00:00:00:00:01", "exactly one of tap and tap_fd"),
            ("mac=02:00:00:00:00:01", "exactly one of tap and tap_fd"),
            ("fd=1,mac=02:00:00:00:00:01", "standard stream"),
            ("tap=a,mac=02:00:00:00:01", "is not aa:bb"),
            ("tap=a,mac=03:00:00:00:00:01", "multicast"),
        ];
        for (text, wanted) in checks {
            config.net = vec![text.parse().expect("parses")];
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("net[0]") && err.contains(wanted), "{text}: {err}");
        }
        config.net = vec![net.clone(), net];
        assert!(config.validate().unwrap_err().to_string().contains("used twice"));
        config.net = (0..5).map(|i| format!("fd={},mac=02:00:00:00:00:0{i}", i + 3).parse().expect("net")).collect();
        assert!(config.validate().unwrap_err().to_string().contains("at most 4 net devices"));
    }

    #[test]
    fn missing_file_is_named() {
        let err = VmConfig::from_file(Path::new("/nonexistent/vm.json")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vm.json"), "{err}");
    }
}
