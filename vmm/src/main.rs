//! `kata-like-vmm`: boots one microVM from flags or a config file.
//!
//! Exit status: 0 when the guest powers off or reboots, 1 on a VM failure
//! (the reason is logged: emulation failure with RIP and code bytes, triple
//! fault, ...), 2 on bad configuration (or a jail that cannot be entered),
//! 128+N when stopped by signal N, 159 (128+SIGSYS) when a thread made a
//! system call its seccomp filter forbids (logged with its number).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kata_like_vmm::arch::x86_64::cpuid::{self, CpuTemplate};
use kata_like_vmm::builder::RestoreOverrides;
use kata_like_vmm::devices::serial::SerialOutput;
use kata_like_vmm::jail::JailConfig;
use kata_like_vmm::{clock, VmConfig, Vmm, VmmOptions, VsockConfig};

#[derive(Debug, Parser)]
#[command(name = "kata-like-vmm", version, about = "kata-like KVM microVM monitor")]
struct Cli {
    /// VM config file (JSON, or TOML when it ends in .toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kernel: uncompressed ELF vmlinux (PVH) or bzImage.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (newc cpio, optionally gzipped).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Replace the kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Append to the kernel command line.
    #[arg(long)]
    append: Option<String>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u8>,
    /// Guest memory in MiB.
    #[arg(long = "memory")]
    memory_mib: Option<u32>,
    /// Add a vsock device serving host connections on this Unix socket.
    #[arg(long)]
    vsock_uds: Option<PathBuf>,
    /// Guest CID of the vsock device.
    #[arg(long, requires = "vsock_uds")]
    guest_cid: Option<u64>,
    /// Add a virtio-fs device: TAG=SOCKET, SOCKET being virtiofsd's
    /// vhost-user socket (repeatable).
    #[arg(long = "fs")]
    fs: Vec<kata_like_vmm::config::FsConfig>,
    /// Add a virtio-net device: tap=NAME,mac=MAC[,mtu=N] or, for a tap
    /// opened by the parent, fd=N,mac=MAC[,mtu=N] (repeatable).
    #[arg(long = "net")]
    net: Vec<kata_like_vmm::config::NetConfig>,
    /// CPUID template: conservative (nested/PVM-safe, default) or host.
    #[arg(long)]
    cpu_template: Option<CpuTemplate>,
    /// Guest console: stdout, null, or a file path.
    #[arg(long)]
    serial: Option<SerialOutput>,
    /// Sample the guest RIP and write a per-function profile to this file.
    #[arg(long)]
    profile_rip: Option<PathBuf>,
    /// RIP sampling interval in microseconds. The default is prime and not a
    /// multiple of the guest tick (10 ms at HZ=100), so samples do not
    /// synchronise with timer interrupts.
    #[arg(long, default_value_t = 7_919)]
    profile_interval_us: u64,
    /// Serve pause/resume/snapshot requests on this Unix socket (JSON lines).
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Restore the VM a snapshot directory holds instead of booting one.
    /// Only the host ends may change: --vsock-uds, --fs (same tags), --net
    /// (same count), --serial.
    #[arg(long, conflicts_with_all = ["config", "kernel", "initrd", "cmdline", "append", "vcpus", "memory_mib", "cpu_template", "guest_cid"])]
    restore: Option<PathBuf>,
    /// Once the VM is built, enter a jail (own mount, network, IPC and UTS
    /// namespaces, a root holding only what the VMM still needs, no
    /// capabilities) whose root is mounted on this empty directory. Needs
    /// root; see --jail-uid and --jail-gid.
    #[arg(long, requires_all = ["jail_uid", "jail_gid"])]
    jail: Option<PathBuf>,
    /// The user the jailed VMM runs as.
    #[arg(long, requires = "jail")]
    jail_uid: Option<u32>,
    /// The group the jailed VMM runs as.
    #[arg(long, requires = "jail")]
    jail_gid: Option<u32>,
    /// seccomp filters per VMM thread: trap (a forbidden system call stops
    /// the VM with a message naming it), log (allow and have the kernel log
    /// it) or off.
    #[arg(long, default_value = "trap")]
    seccomp: kata_like_vmm::jail::seccomp::SeccompMode,
    /// Size cap of the console file in bytes (past it the file restarts
    /// with the newest output).
    #[arg(long)]
    serial_limit: Option<u64>,
    /// Print the system calls each VMM thread's seccomp filter allows and
    /// exit.
    #[arg(long)]
    print_seccomp: bool,
    /// Print the CPUID vCPU 0 would get and exit.
    #[arg(long)]
    print_cpuid: bool,
    /// Log filter (tracing syntax); RUST_LOG also works.
    #[arg(long, default_value = "info")]
    log_level: String,
}

impl Cli {
    fn vm_config(&self) -> Result<VmConfig, String> {
        let mut config = match &self.config {
            Some(path) => VmConfig::from_file(path).map_err(|e| e.to_string())?,
            None => VmConfig::new(self.kernel.clone().ok_or("--kernel or --config is required")?),
        };
        if let Some(kernel) = &self.kernel {
            config.kernel = kernel.clone();
        }
        if let Some(initrd) = &self.initrd {
            config.initrd = Some(initrd.clone());
        }
        if let Some(cmdline) = &self.cmdline {
            config.cmdline = cmdline.clone();
        }
        if let Some(extra) = &self.append {
            config.cmdline = format!("{} {extra}", config.cmdline);
        }
        if let Some(vcpus) = self.vcpus {
            config.vcpus = vcpus;
        }
        if let Some(memory) = self.memory_mib {
            config.memory_mib = memory;
        }
        if let Some(uds_path) = &self.vsock_uds {
            let guest_cid = self.guest_cid.unwrap_or(kata_like_vmm::config::DEFAULT_GUEST_CID);
            config.vsock = Some(VsockConfig { uds_path: uds_path.clone(), guest_cid });
        }
        config.fs.extend(self.fs.iter().cloned());
        config.net.extend(self.net.iter().cloned());
        if let Some(template) = self.cpu_template {
            config.cpu_template = template;
        }
        if let Some(serial) = &self.serial {
            config.serial = serial.clone();
        }
        if let Some(limit) = self.serial_limit {
            config.serial_limit_bytes = limit;
        }
        Ok(config)
    }
}

fn print_cpuid(template: CpuTemplate) -> anyhow::Result<()> {
    let kvm = kvm_ioctls::Kvm::new()?;
    let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    print!("{}", cpuid::render(&cpuid::vcpu_cpuid(template, &supported, 0, 1)));
    Ok(())
}

fn main() -> ExitCode {
    clock::mark_start();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();

    if cli.print_seccomp {
        use kata_like_vmm::jail::seccomp::{describe, ThreadKind};
        for (kind, thread) in
            [(ThreadKind::Vmm, "vmm"), (ThreadKind::Vcpu, "vcpu<N>"), (ThreadKind::Sampler, "rip-sampler")]
        {
            let calls = describe(kind);
            println!("{thread}: {} system calls: {}", calls.len(), calls.join(", "));
        }
        return ExitCode::SUCCESS;
    }
    if cli.print_cpuid {
        return match print_cpuid(cli.cpu_template.unwrap_or_default()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kata-like-vmm: error: {e:#}");
                ExitCode::from(1)
            }
        };
    }

    let options = VmmOptions {
        profile_rip: cli.profile_rip.clone().map(|p| (p, Duration::from_micros(cli.profile_interval_us.max(100)))),
        api_sock: cli.api_sock.clone(),
        jail: match (&cli.jail, cli.jail_uid, cli.jail_gid) {
            (Some(root), Some(uid), Some(gid)) => Some(JailConfig { root: root.clone(), uid, gid }),
            _ => None,
        },
        seccomp: cli.seccomp,
    };
    let built = match &cli.restore {
        Some(dir) => {
            let overrides = RestoreOverrides {
                vsock_uds: cli.vsock_uds.clone(),
                fs: cli.fs.clone(),
                net: cli.net.clone(),
                serial: cli.serial.clone(),
                serial_limit: cli.serial_limit,
            };
            Vmm::restore(dir, &overrides, options)
        }
        None => match cli.vm_config() {
            Ok(config) => Vmm::build(config, options),
            Err(e) => {
                eprintln!("kata-like-vmm: error: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let vmm = match built {
        Ok(vmm) => vmm,
        Err(e) => {
            eprintln!("kata-like-vmm: error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = vmm.enter_jail() {
        eprintln!("kata-like-vmm: error: {e}");
        return ExitCode::from(2);
    }
    let reason = vmm.run();
    if let kata_like_vmm::ExitReason::Fatal(why) = &reason {
        eprintln!("kata-like-vmm: error: {why}");
    }
    // vCPU threads may still be inside KVM_RUN: end the process here rather
    // than joining them.
    std::process::exit(reason.exit_code());
}
