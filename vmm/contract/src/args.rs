//! The VMM's command line, one type for both ends: the runtime fills a
//! [`VmmArgs`] and turns it into argv with [`VmmArgs::to_argv`]; the VMM
//! parses argv into the same struct with clap. The unit test below checks
//! that every field survives the trip.
//!
//! The argument types ([`FsConfig`], [`NetConfig`], [`SerialOutput`],
//! [`SeccompMode`], [`CpuTemplate`]) are also the VMM's config-file types,
//! so each has one parser and one printer.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

/// Default size cap of a console file (`--serial-limit`).
pub const DEFAULT_SERIAL_LIMIT: u64 = 8 << 20;
/// Default RIP sampling interval (`--profile-interval-us`). Prime and not a
/// multiple of the guest tick (10 ms at HZ=100), so samples do not
/// synchronise with timer interrupts.
pub const DEFAULT_PROFILE_INTERVAL_US: u64 = 7_919;

/// Default log filter (`--log-level`).
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// `kata-like-vmm`'s arguments.
#[derive(Clone, Debug, Default, PartialEq, Eq, Parser)]
#[command(name = "kata-like-vmm", version, about = "kata-like KVM microVM monitor", args_override_self = true)]
pub struct VmmArgs {
    /// VM config file (JSON, or TOML when it ends in .toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Kernel: uncompressed ELF vmlinux (PVH) or bzImage.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs (newc cpio, optionally gzipped).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Replace the kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Append to the kernel command line.
    #[arg(long)]
    pub append: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long = "memory")]
    pub memory_mib: Option<u32>,
    /// Add a vsock device serving host connections on this Unix socket.
    #[arg(long)]
    pub vsock_uds: Option<PathBuf>,
    /// Guest CID of the vsock device.
    #[arg(long, requires = "vsock_uds")]
    pub guest_cid: Option<u64>,
    /// Add a virtio-fs device: TAG=SOCKET, SOCKET being virtiofsd's
    /// vhost-user socket (repeatable).
    #[arg(long = "fs")]
    pub fs: Vec<FsConfig>,
    /// Add a virtio-net device: tap=NAME,mac=MAC[,mtu=N] or, for a tap
    /// opened by the parent, fd=N,mac=MAC[,mtu=N] (repeatable).
    #[arg(long = "net")]
    pub net: Vec<NetConfig>,
    /// Add a virtio-balloon for free page reporting (memory the guest frees
    /// goes back to the host). A restored VM has its snapshot's devices.
    #[arg(long, conflicts_with = "restore")]
    pub balloon: bool,
    /// CPUID template: conservative (nested/PVM-safe, default) or host.
    #[arg(long)]
    pub cpu_template: Option<CpuTemplate>,
    /// Guest console: stdout, null, or a file path.
    #[arg(long)]
    pub serial: Option<SerialOutput>,
    /// Sample the guest RIP and write a per-function profile to this file.
    #[arg(long)]
    pub profile_rip: Option<PathBuf>,
    /// RIP sampling interval in microseconds.
    #[arg(long, default_value_t = DEFAULT_PROFILE_INTERVAL_US)]
    pub profile_interval_us: u64,
    /// Serve pause/resume/snapshot requests on this Unix socket (JSON lines).
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
    /// Restore the VM a snapshot directory holds instead of booting one.
    /// Only the host ends may change: --vsock-uds, --fs (same tags), --net
    /// (same count), --serial.
    #[arg(long, conflicts_with_all = ["config", "kernel", "initrd", "cmdline", "append", "vcpus", "memory_mib", "cpu_template", "guest_cid"])]
    pub restore: Option<PathBuf>,
    /// For benchmarks only: restore without checking the memory file
    /// against the checksum in the state file (a damaged snapshot then runs).
    #[arg(long, requires = "restore")]
    pub skip_snapshot_check: bool,
    /// Once the VM is built, enter a jail (own mount, network, IPC and UTS
    /// namespaces, a root holding only what the VMM still needs, no
    /// capabilities) whose root is mounted on this empty directory. Needs
    /// root; see --jail-uid and --jail-gid.
    #[arg(long, requires_all = ["jail_uid", "jail_gid"])]
    pub jail: Option<PathBuf>,
    /// The user the jailed VMM runs as.
    #[arg(long, requires = "jail")]
    pub jail_uid: Option<u32>,
    /// The group the jailed VMM runs as.
    #[arg(long, requires = "jail")]
    pub jail_gid: Option<u32>,
    /// seccomp filters per VMM thread: trap (a forbidden system call stops
    /// the VM with a message naming it), log (allow and have the kernel log
    /// it) or off.
    #[arg(long, default_value = "trap")]
    pub seccomp: SeccompMode,
    /// Size cap of the console file in bytes (past it the file restarts
    /// with the newest output).
    #[arg(long)]
    pub serial_limit: Option<u64>,
    /// Print the system calls each VMM thread's seccomp filter allows and
    /// exit.
    #[arg(long)]
    pub print_seccomp: bool,
    /// Print the CPUID vCPU 0 would get and exit.
    #[arg(long)]
    pub print_cpuid: bool,
    /// Log filter (tracing syntax); RUST_LOG also works.
    #[arg(long, default_value = DEFAULT_LOG_LEVEL)]
    pub log_level: String,
}

impl VmmArgs {
    /// Arguments with clap's defaults: nothing set but the seccomp mode,
    /// the sampling interval and the log level.
    pub fn new() -> VmmArgs {
        VmmArgs {
            profile_interval_us: DEFAULT_PROFILE_INTERVAL_US,
            log_level: DEFAULT_LOG_LEVEL.into(),
            ..VmmArgs::default()
        }
    }

    /// The command line (without the program name) that parses back into
    /// `self`. Values are attached (`--flag=value`) so that one starting
    /// with `-` stays a value; a path that is not UTF-8 follows its flag
    /// as a word of its own. (`--fs`, `--net` and `--serial` values
    /// are parsed as text: their paths must be UTF-8.)
    pub fn to_argv(&self) -> Vec<OsString> {
        let mut argv = Vec::new();
        let mut flag = |name: &str, value: &OsStr| {
            if value.to_str().is_some() {
                let mut arg = OsString::from(format!("--{name}="));
                arg.push(value);
                argv.push(arg);
            } else {
                // clap splits `--flag=value` only when it is UTF-8; a path
                // that is not goes as its own word (our paths are absolute,
                // so it cannot be mistaken for a flag).
                argv.push(OsString::from(format!("--{name}")));
                argv.push(value.to_owned());
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.as_os_str().to_owned());
        let text = |v: Option<String>| v.map(OsString::from);
        let singles: [(&str, Option<OsString>); 20] = [
            ("config", path(&self.config)),
            ("kernel", path(&self.kernel)),
            ("initrd", path(&self.initrd)),
            ("cmdline", text(self.cmdline.clone())),
            ("append", text(self.append.clone())),
            ("vcpus", text(self.vcpus.map(|v| v.to_string()))),
            ("memory", text(self.memory_mib.map(|v| v.to_string()))),
            ("vsock-uds", path(&self.vsock_uds)),
            ("guest-cid", text(self.guest_cid.map(|v| v.to_string()))),
            ("cpu-template", text(self.cpu_template.map(|v| v.to_string()))),
            ("serial", self.serial.as_ref().map(SerialOutput::to_arg)),
            ("profile-rip", path(&self.profile_rip)),
            // Defaults are left out, so that extra arguments appended by the
            // caller (`kata-like vm exec --vmm-arg`) read as the only ones.
            (
                "profile-interval-us",
                text(
                    Some(self.profile_interval_us).filter(|v| *v != DEFAULT_PROFILE_INTERVAL_US).map(|v| v.to_string()),
                ),
            ),
            ("api-sock", path(&self.api_sock)),
            ("restore", path(&self.restore)),
            ("jail", path(&self.jail)),
            ("jail-uid", text(self.jail_uid.map(|v| v.to_string()))),
            ("jail-gid", text(self.jail_gid.map(|v| v.to_string()))),
            ("seccomp", text(Some(self.seccomp).filter(|m| *m != SeccompMode::default()).map(|m| m.to_string()))),
            ("serial-limit", text(self.serial_limit.map(|v| v.to_string()))),
        ];
        for (name, value) in singles {
            if let Some(value) = value {
                flag(name, &value);
            }
        }
        for fs in &self.fs {
            flag("fs", &fs.to_arg());
        }
        for net in &self.net {
            flag("net", OsStr::new(&net.to_string()));
        }
        if self.log_level != DEFAULT_LOG_LEVEL {
            flag("log-level", OsStr::new(&self.log_level));
        }
        if self.balloon {
            argv.push("--balloon".into());
        }
        if self.skip_snapshot_check {
            argv.push("--skip-snapshot-check".into());
        }
        if self.print_seccomp {
            argv.push("--print-seccomp".into());
        }
        if self.print_cpuid {
            argv.push("--print-cpuid".into());
        }
        argv
    }
}

/// A virtio-fs device served by a virtiofsd listening on `socket`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The mount tag the guest uses (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    /// virtiofsd's vhost-user socket (`virtiofsd --socket-path`).
    pub socket: PathBuf,
}

impl std::str::FromStr for FsConfig {
    type Err = String;

    /// Parses `TAG=SOCKET` (the VMM's `--fs` flag).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tag, socket) = s.split_once('=').ok_or_else(|| format!("--fs {s:?}: expected TAG=SOCKET"))?;
        Ok(FsConfig { tag: tag.to_string(), socket: socket.into() })
    }
}

/// A virtio-net device on a tap: either a tap interface opened by name in
/// the VMM's network namespace, or an inherited descriptor of a tap the
/// parent opened (in a pod's namespace).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap interface name.
    #[serde(default)]
    pub tap: Option<String>,
    /// Inherited tap descriptor (opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR).
    #[serde(default)]
    pub tap_fd: Option<i32>,
    /// The guest NIC's MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The MTU the guest is told (default 1500).
    #[serde(default)]
    pub mtu: Option<u16>,
}

impl std::str::FromStr for NetConfig {
    type Err = String;

    /// Parses `tap=NAME,mac=MAC[,mtu=N]` or `fd=N,mac=MAC[,mtu=N]` (the
    /// VMM's `--net` flag).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut net = NetConfig { tap: None, tap_fd: None, mac: String::new(), mtu: None };
        for part in s.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("--net {s:?}: {part:?} is not KEY=VALUE"))?;
            match key {
                "tap" => net.tap = Some(value.to_string()),
                "fd" => {
                    net.tap_fd = Some(value.parse().map_err(|_| format!("--net {s:?}: fd {value:?} is not a number"))?)
                }
                "mac" => net.mac = value.to_string(),
                "mtu" => {
                    net.mtu = Some(value.parse().map_err(|_| format!("--net {s:?}: mtu {value:?} is not a number"))?)
                }
                _ => return Err(format!("--net {s:?}: unknown key {key:?} (tap, fd, mac, mtu)")),
            }
        }
        Ok(net)
    }
}

impl FsConfig {
    /// `TAG=SOCKET`, as `--fs` takes it.
    pub fn to_arg(&self) -> OsString {
        let mut arg = OsString::from(format!("{}=", self.tag));
        arg.push(&self.socket);
        arg
    }
}

impl fmt::Display for NetConfig {
    /// `tap=NAME,mac=MAC[,mtu=N]` or `fd=N,mac=MAC[,mtu=N]`, as `--net`
    /// takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(tap) = &self.tap {
            parts.push(format!("tap={tap}"));
        }
        if let Some(fd) = self.tap_fd {
            parts.push(format!("fd={fd}"));
        }
        parts.push(format!("mac={}", self.mac));
        if let Some(mtu) = self.mtu {
            parts.push(format!("mtu={mtu}"));
        }
        f.write_str(&parts.join(","))
    }
}

impl SerialOutput {
    /// The `--serial` value that parses back into `self`.
    pub fn to_arg(&self) -> OsString {
        match self {
            SerialOutput::Stdout => "stdout".into(),
            SerialOutput::Null => "null".into(),
            SerialOutput::File(path) => path.as_os_str().to_owned(),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Trap => "trap",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// Where the guest console goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's stdout.
    #[default]
    Stdout,
    /// Discarded.
    Null,
    /// Appended to a file (created if missing).
    File(PathBuf),
}

impl std::str::FromStr for SerialOutput {
    type Err = std::convert::Infallible;
    /// `stdout`, `null`, or a file path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" | "-" => SerialOutput::Stdout,
            "null" | "none" => SerialOutput::Null,
            path => SerialOutput::File(PathBuf::from(path)),
        })
    }
}

impl serde::Serialize for SerialOutput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SerialOutput::Stdout => s.serialize_str("stdout"),
            SerialOutput::Null => s.serialize_str("null"),
            SerialOutput::File(path) => s.serialize_str(&path.to_string_lossy()),
        }
    }
}

impl<'de> serde::Deserialize<'de> for SerialOutput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(text.parse().unwrap_or_default())
    }
}

/// What the filters do with a system call outside their list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SeccompMode {
    /// SIGSYS: log the call and exit with [`EXIT_SECCOMP`].
    #[default]
    Trap,
    /// Allow it and have the kernel log it (for finding missing calls).
    Log,
    /// No filters.
    Off,
}

impl std::str::FromStr for SeccompMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "trap" | "on" => Ok(SeccompMode::Trap),
            "log" => Ok(SeccompMode::Log),
            "off" | "none" => Ok(SeccompMode::Off),
            other => Err(format!("--seccomp {other:?}: expected trap, log or off")),
        }
    }
}

/// Which CPUID the guest sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuTemplate {
    /// Allow-listed features that nested KVM's emulator can run (default).
    #[default]
    Conservative,
    /// Host pass-through (KVM_GET_SUPPORTED_CPUID), for hardware KVM.
    Host,
}

impl std::fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuTemplate::Conservative => "conservative",
            CpuTemplate::Host => "host",
        })
    }
}

impl std::str::FromStr for CpuTemplate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "conservative" => Ok(CpuTemplate::Conservative),
            "host" => Ok(CpuTemplate::Host),
            other => Err(format!("unknown CPU template '{other}' (expected conservative or host)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    fn parse(argv: &[OsString]) -> VmmArgs {
        let mut full = vec![OsString::from("kata-like-vmm")];
        full.extend(argv.iter().cloned());
        VmmArgs::try_parse_from(full).expect("the argv we print parses")
    }

    #[test]
    fn boot_arguments_survive_the_trip() {
        let args = VmmArgs {
            kernel: Some("/k/vmlinux".into()),
            initrd: Some("/k/initrd.cpio".into()),
            cmdline: Some("console=ttyS0 quiet".into()),
            append: Some("-weird value=1".into()),
            vcpus: Some(2),
            memory_mib: Some(512),
            vsock_uds: Some("/run/vm/vsock.sock".into()),
            guest_cid: Some(7),
            fs: vec![
                FsConfig { tag: "kataShared".into(), socket: "/run/vm/virtiofsd.sock".into() },
                FsConfig { tag: "b".into(), socket: "/x=y".into() },
            ],
            net: vec![
                NetConfig { tap: None, tap_fd: Some(3), mac: "02:00:0a:58:00:2f".into(), mtu: Some(1450) },
                NetConfig { tap: Some("tap0".into()), tap_fd: None, mac: "02:00:00:00:00:01".into(), mtu: None },
            ],
            cpu_template: Some(CpuTemplate::Host),
            serial: Some(SerialOutput::File("/run/vm/console.log".into())),
            profile_rip: Some("/tmp/profile".into()),
            profile_interval_us: 1234,
            api_sock: Some("/run/vm/api.sock".into()),
            jail: Some("/run/vm/root".into()),
            jail_uid: Some(1000),
            jail_gid: Some(1001),
            seccomp: SeccompMode::Log,
            serial_limit: Some(4096),
            log_level: "debug".into(),
            ..VmmArgs::new()
        };
        assert_eq!(parse(&args.to_argv()), args);
    }

    #[test]
    fn restore_and_print_arguments_survive_the_trip() {
        let args = VmmArgs {
            restore: Some("/templates/t1".into()),
            vsock_uds: Some("/run/vm/vsock.sock".into()),
            serial: Some(SerialOutput::Null),
            seccomp: SeccompMode::Off,
            ..VmmArgs::new()
        };
        assert_eq!(parse(&args.to_argv()), args);
        let unchecked = VmmArgs { skip_snapshot_check: true, ..args.clone() };
        assert_eq!(parse(&unchecked.to_argv()), unchecked);
        let print = VmmArgs { print_seccomp: true, print_cpuid: true, ..VmmArgs::new() };
        assert_eq!(parse(&print.to_argv()), print);
        assert_eq!(parse(&[]), VmmArgs::new(), "new() holds clap's defaults");
        assert!(VmmArgs::new().to_argv().is_empty(), "defaults are not printed");
    }

    #[test]
    fn extra_arguments_appended_by_a_caller_win() {
        let args = VmmArgs { kernel: Some("/k".into()), log_level: "warn".into(), ..VmmArgs::new() };
        let mut argv = args.to_argv();
        argv.push("--log-level=debug".into());
        argv.push("--seccomp=log".into());
        let parsed = parse(&argv);
        assert_eq!(parsed.log_level, "debug");
        assert_eq!(parsed.seccomp, SeccompMode::Log);
    }

    #[test]
    fn non_utf8_paths_survive_the_trip() {
        let odd = PathBuf::from(OsStr::from_bytes(b"/tmp/\xff\xfe-state"));
        let args = VmmArgs {
            kernel: Some(odd.clone()),
            initrd: Some(odd.join("initrd")),
            vsock_uds: Some(odd.join("vsock.sock")),
            ..VmmArgs::new()
        };
        assert_eq!(parse(&args.to_argv()), args);
    }

    #[test]
    fn bad_values_are_named() {
        let err = VmmArgs::try_parse_from(["kata-like-vmm", "--net=fd=x,mac=m"]).unwrap_err().to_string();
        assert!(err.contains("fd \"x\" is not a number"), "{err}");
        let err = VmmArgs::try_parse_from(["kata-like-vmm", "--seccomp=maybe"]).unwrap_err().to_string();
        assert!(err.contains("expected trap, log or off"), "{err}");
        let err = VmmArgs::try_parse_from(["kata-like-vmm", "--restore=/t", "--kernel=/k"]).unwrap_err().to_string();
        assert!(err.contains("--kernel"), "{err}");
    }
}
