//! `kata-like-vmm`: boots one microVM from flags or a config file.
//!
//! Exit status: 0 when the guest powers off or reboots, 1 on a VM failure
//! (the reason is logged: emulation failure with RIP and code bytes, triple
//! fault, ...), 2 on bad configuration (or a jail that cannot be entered),
//! 128+N when stopped by signal N, 159 (128+SIGSYS) when a thread made a
//! system call its seccomp filter forbids (logged with its number).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kata_like_vmm::arch::x86_64::cpuid::{self, CpuTemplate};
use kata_like_vmm::builder::RestoreOverrides;
use kata_like_vmm::jail::JailConfig;
use kata_like_vmm::{clock, VmConfig, Vmm, VmmOptions, VsockConfig};
use kata_like_vmm_contract::VmmArgs;

/// The VM the arguments describe (a config file, overridden by flags).
/// The arguments are the contract type the runtime prints them from
/// (`kata_like_vmm_contract::args`).
fn vm_config(args: &VmmArgs) -> Result<VmConfig, String> {
    let mut config = match &args.config {
        Some(path) => VmConfig::from_file(path).map_err(|e| e.to_string())?,
        None => VmConfig::new(args.kernel.clone().ok_or("--kernel or --config is required")?),
    };
    if let Some(kernel) = &args.kernel {
        config.kernel = kernel.clone();
    }
    if let Some(initrd) = &args.initrd {
        config.initrd = Some(initrd.clone());
    }
    if let Some(cmdline) = &args.cmdline {
        config.cmdline = cmdline.clone();
    }
    if let Some(extra) = &args.append {
        config.cmdline = format!("{} {extra}", config.cmdline);
    }
    if let Some(vcpus) = args.vcpus {
        config.vcpus = vcpus;
    }
    if let Some(memory) = args.memory_mib {
        config.memory_mib = memory;
    }
    if let Some(uds_path) = &args.vsock_uds {
        let guest_cid = args.guest_cid.unwrap_or(kata_like_vmm::config::DEFAULT_GUEST_CID);
        config.vsock = Some(VsockConfig { uds_path: uds_path.clone(), guest_cid });
    }
    config.fs.extend(args.fs.iter().cloned());
    config.net.extend(args.net.iter().cloned());
    config.balloon |= args.balloon;
    if let Some(template) = args.cpu_template {
        config.cpu_template = template;
    }
    if let Some(serial) = &args.serial {
        config.serial = serial.clone();
    }
    if let Some(limit) = args.serial_limit {
        config.serial_limit_bytes = limit;
    }
    Ok(config)
}

fn print_cpuid(template: CpuTemplate) -> anyhow::Result<()> {
    let kvm = kvm_ioctls::Kvm::new()?;
    let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    print!("{}", cpuid::render(&cpuid::vcpu_cpuid(template, &supported, 0, 1)));
    Ok(())
}

fn main() -> ExitCode {
    clock::mark_start();
    let cli = VmmArgs::parse();
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
        skip_snapshot_check: cli.skip_snapshot_check,
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
        None => match vm_config(&cli) {
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
