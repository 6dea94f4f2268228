//! What to boot: a [`VmSpec`] describes one sandbox VM (binaries, size,
//! devices, confinement); [`VmSpec::vmm_args`] turns it into the VMM's
//! arguments, the contract type both ends share.

use std::path::PathBuf;
use std::time::Duration;

use kata_like_vmm_contract::{FsConfig, NetConfig, SeccompMode, SerialOutput, VmmArgs};

use crate::config::RuntimeConfig;

/// The virtio-fs tag of a sandbox's shared directory.
pub const SHARED_TAG: &str = "kataShared";

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// The `kata-like-vmm` binary.
    pub vmm: PathBuf,
    /// Guest kernel (vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Guest initramfs with the agent as /init.
    pub initrd: PathBuf,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Kernel parameters appended to the VMM's defaults.
    pub extra_cmdline: Option<String>,
    /// How long the agent may take to answer after the VMM starts.
    pub boot_timeout: Duration,
    /// Parent of the per-VM state directory (default: the system temp dir).
    pub state_parent: Option<PathBuf>,
    /// Extra `kata-like-vmm` arguments (debugging, e.g. `--profile-rip=FILE`).
    pub vmm_args: Vec<String>,
    /// Use exactly this state directory (created if needed, and left for
    /// the caller to remove) instead of a temporary one under `state_parent`.
    pub state_dir: Option<PathBuf>,
    /// A host directory shared with the guest over virtio-fs.
    pub shared: Option<super::virtiofsd::SharedFs>,
    /// A NIC on an open tap (pod networking).
    pub net: Option<NetDevice>,
    /// A virtio-balloon with free page reporting (a cold boot's device; a
    /// restored VM has its snapshot's).
    pub balloon: bool,
    /// The host cgroup the VMM and virtiofsd join (the spec's
    /// `cgroupsPath`); removed when the VM is gone.
    pub cgroup: Option<std::sync::Arc<super::cgroup::HostCgroup>>,
    /// Restore this snapshot directory instead of booting `kernel` and
    /// `initrd` (`vcpus`, `memory_mib` and `extra_cmdline` then come from
    /// the snapshot; the devices must match it).
    pub restore_from: Option<PathBuf>,
    /// How the VMM is confined (jail, seccomp).
    pub confinement: Confinement,
}

/// How the VMM process is confined (docs/security.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// Jail the VMM as this uid and gid once its VM is built (own mount,
    /// network, IPC and UTS namespaces, no capabilities); needs root.
    pub jail: Option<(u32, u32)>,
    /// The VMM's seccomp mode: trap, log or off.
    pub seccomp: String,
    /// Size cap of the console log (the VMM's default when None).
    pub console_limit: Option<u64>,
}

impl Confinement {
    /// The default: jailed as [`DEFAULT_JAIL_ID`] when we are root (the
    /// jail needs it), seccomp filters always.
    pub fn default_for_this_process() -> Confinement {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        Confinement {
            jail: root.then_some((crate::config::DEFAULT_JAIL_ID, crate::config::DEFAULT_JAIL_ID)),
            seccomp: seccomp_override().unwrap_or_else(|| "trap".into()),
            console_limit: None,
        }
    }
}

/// `KATA_LIKE_VMM_SECCOMP` (trap, log or off), for finding the system
/// calls a new VMM code path needs: with `log` the kernel logs each call a
/// filter would have refused (dmesg, audit type 1326) and the VM goes on.
/// It overrides the configuration's `vmm_seccomp` too.
pub fn seccomp_override() -> Option<String> {
    std::env::var("KATA_LIKE_VMM_SECCOMP").ok().filter(|m| matches!(m.as_str(), "trap" | "log" | "off"))
}

/// A virtio-net device for the VM on a tap the caller opened.
#[derive(Clone, Debug)]
pub struct NetDevice {
    /// The tap (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
    pub tap: std::sync::Arc<std::os::fd::OwnedFd>,
    /// The guest NIC's MAC.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
}

impl Confinement {
    /// How sandbox VMMs are confined under `config`: jailed when `jail` is
    /// set and we are root (without root there is nothing to drop, and the
    /// namespaces cannot be made); `KATA_LIKE_VMM_SECCOMP` overrides the
    /// seccomp mode.
    pub fn for_config(config: &RuntimeConfig) -> Confinement {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if config.jail && !root {
            log::warn!("jail = true needs root; the VMM runs unjailed (seccomp filters still apply)");
        }
        Confinement {
            jail: (config.jail && root).then_some((config.jail_uid, config.jail_gid)),
            seccomp: seccomp_override().unwrap_or_else(|| config.vmm_seccomp.clone()),
            console_limit: Some(config.console_limit_bytes),
        }
    }
}

impl VmSpec {
    /// The VM of a sandbox under `config`: the configured VMM, kernel,
    /// initramfs and kernel parameters, state in `state_dir`, and `shared`
    /// served by virtiofsd under [`SHARED_TAG`]. No NIC, no host cgroup.
    pub fn for_sandbox(
        config: &RuntimeConfig,
        vcpus: u8,
        memory_mib: u32,
        state_dir: PathBuf,
        shared: PathBuf,
    ) -> VmSpec {
        VmSpec {
            vmm: config.vmm.clone(),
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            vcpus,
            memory_mib,
            extra_cmdline: Some(config.kernel_params.clone()).filter(|p| !p.is_empty()),
            boot_timeout: config.boot_timeout(),
            state_parent: None,
            vmm_args: config.vmm_args.clone(),
            state_dir: Some(state_dir),
            shared: Some(super::virtiofsd::SharedFs {
                virtiofsd: config.virtiofsd.clone(),
                dir: shared,
                tag: SHARED_TAG.into(),
                cache: config.virtiofsd_cache.clone(),
                extra_args: config.virtiofsd_args.clone(),
            }),
            net: None,
            balloon: config.balloon,
            cgroup: None,
            restore_from: None,
            confinement: Confinement::for_config(config),
        }
    }
}

/// The descriptor number the VMM finds the tap at (`--net fd=N`).
pub const VMM_TAP_FD: i32 = 3;

/// Where a VM's host ends are, for [`VmSpec::vmm_args`].
#[derive(Clone, Debug)]
pub struct HostEnds {
    /// The hybrid vsock socket.
    pub vsock: PathBuf,
    /// The guest console file.
    pub console: PathBuf,
    /// The control socket.
    pub api: PathBuf,
    /// The jail's root mount point (used when confined to a jail).
    pub jail_root: PathBuf,
    /// virtiofsd's vhost-user socket, when the VM has a shared directory.
    pub virtiofsd: Option<PathBuf>,
}

impl VmSpec {
    /// The VMM's arguments for this VM with its host ends at `ends` (the
    /// NIC's tap is expected at [`VMM_TAP_FD`]). `vmm_args` (debugging
    /// extras) are appended by the caller.
    pub fn vmm_args(&self, ends: &HostEnds) -> Result<VmmArgs, String> {
        let mut args = VmmArgs::new();
        match &self.restore_from {
            Some(dir) => args.restore = Some(dir.clone()),
            None => {
                args.kernel = Some(self.kernel.clone());
                args.initrd = Some(self.initrd.clone());
                args.vcpus = Some(self.vcpus);
                args.memory_mib = Some(self.memory_mib);
                args.append = self.extra_cmdline.clone();
                args.balloon = self.balloon;
            }
        }
        args.vsock_uds = Some(ends.vsock.clone());
        args.serial = Some(SerialOutput::File(ends.console.clone()));
        args.api_sock = Some(ends.api.clone());
        args.seccomp = self.confinement.seccomp.parse::<SeccompMode>()?;
        args.serial_limit = self.confinement.console_limit;
        if let Some((uid, gid)) = self.confinement.jail {
            args.jail = Some(ends.jail_root.clone());
            args.jail_uid = Some(uid);
            args.jail_gid = Some(gid);
        }
        if let (Some(shared), Some(socket)) = (&self.shared, &ends.virtiofsd) {
            args.fs.push(FsConfig { tag: shared.tag.clone(), socket: socket.clone() });
        }
        if let Some(net) = &self.net {
            let mtu = u16::try_from(net.mtu).map_err(|_| format!("NIC MTU {} is out of range", net.mtu))?;
            args.net.push(NetConfig { tap: None, tap_fd: Some(VMM_TAP_FD), mac: net.mac.clone(), mtu: Some(mtu) });
        }
        Ok(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends() -> HostEnds {
        HostEnds {
            vsock: "/s/vmm/vsock.sock".into(),
            console: "/s/vmm/console.log".into(),
            api: "/s/vmm/api.sock".into(),
            jail_root: "/s/vmm/root".into(),
            virtiofsd: Some("/s/virtiofsd.sock".into()),
        }
    }

    #[test]
    fn a_sandbox_vm_becomes_the_vmm_arguments_it_parses_back() {
        let config = RuntimeConfig { kernel_params: "quiet".into(), ..Default::default() };
        let mut spec = VmSpec::for_sandbox(&config, 2, 512, "/s".into(), "/s/shared".into());
        spec.confinement = Confinement { jail: Some((7, 8)), seccomp: "log".into(), console_limit: Some(99) };
        let args = spec.vmm_args(&ends()).expect("args");
        assert_eq!((args.vcpus, args.memory_mib), (Some(2), Some(512)));
        assert_eq!(args.append.as_deref(), Some("quiet"));
        assert_eq!(args.fs, vec![FsConfig { tag: SHARED_TAG.into(), socket: "/s/virtiofsd.sock".into() }]);
        assert_eq!((args.jail_uid, args.jail_gid, args.serial_limit), (Some(7), Some(8), Some(99)));
        assert_eq!(args.seccomp, SeccompMode::Log);
        let mut argv = vec![std::ffi::OsString::from("kata-like-vmm")];
        argv.extend(args.to_argv());
        let parsed = <VmmArgs as clap::Parser>::try_parse_from(argv).expect("the VMM parses what we print");
        assert_eq!(parsed, args);
    }

    #[test]
    fn a_restore_names_only_the_snapshot_and_host_ends() {
        let config = RuntimeConfig::default();
        let mut spec = VmSpec::for_sandbox(&config, 1, 256, "/s".into(), "/s/shared".into());
        spec.restore_from = Some("/templates/t".into());
        let args = spec.vmm_args(&ends()).expect("args");
        assert_eq!(args.restore.as_deref(), Some(std::path::Path::new("/templates/t")));
        assert!(args.kernel.is_none() && args.vcpus.is_none() && args.append.is_none());
        spec.confinement.seccomp = "sometimes".into();
        assert!(spec.vmm_args(&ends()).unwrap_err().contains("sometimes"));
    }
}
