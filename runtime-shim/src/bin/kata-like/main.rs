//! `kata-like`: the command-line front end.
//!
//! `kata-like vm exec -- CMD ARGS...` boots a microVM, runs CMD in the guest
//! through the agent, prints its output and exits with its exit status
//! (128+N when it died of signal N), then powers the VM off.
//!
//! runc-compatible containers without containerd, for Docker, podman and
//! by hand (see `kata_like_runtime::standalone` and `oci.rs`): `create`,
//! `start`, `run`, `state`, `kill`, `delete`, `exec`, `ps`, `pause`,
//! `resume`, `update`, `list`, `events`, `features`, `spec`, with runc's
//! global flags (`--root`, `--log`, `--log-format`, `--debug`,
//! `--systemd-cgroup`).

mod log;
mod oci;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kata_like_runtime::sandbox::template;
use kata_like_runtime::vm::{SandboxVm, VmSpec};
use kata_like_runtime::{artifacts, standalone};

#[derive(Debug, Parser)]
#[command(name = "kata-like", version, about = "kata-like: microVM-isolated sandboxes")]
struct Cli {
    /// State root of standalone containers.
    #[arg(long, global = true, default_value = standalone::DEFAULT_ROOT)]
    root: PathBuf,
    /// Runtime configuration file [default: $KATA_LIKE_CONFIG, else /etc/kata-like/configuration.toml].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log to this file (appended) instead of stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// The log's format.
    #[arg(long, global = true, value_enum, default_value_t = log::LogFormat::Text)]
    log_format: log::LogFormat,
    /// Log debug messages.
    #[arg(long, global = true)]
    debug: bool,
    /// cgroupsPath is in systemd's slice:prefix:name form (the form is also
    /// recognised without this flag).
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility (checkpointing is not supported).
    #[arg(long, global = true, hide = true)]
    criu: Option<String>,
    /// Accepted for runc compatibility (kata-like runs as root).
    #[arg(long, global = true, hide = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Top,
}

#[derive(Debug, Subcommand)]
enum Top {
    /// Stand-alone microVMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// The runc-compatible commands.
    #[command(flatten)]
    Oci(oci::OciCommand),
    /// Write a default config.json into a bundle directory.
    Spec {
        /// The bundle directory.
        #[arg(long, short = 'b', default_value = ".")]
        bundle: PathBuf,
    },
    /// VM templates (`vm_templates = true` in the config): snapshots of a
    /// booted guest that sandboxes start from.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Check whether this host can run kata-like: KVM, the VMM and guest
    /// artefacts, virtiofsd, tun, cgroups, containerd and our runtime's
    /// registration. Exits 1 if anything fails.
    Check,
}

#[derive(Debug, Subcommand)]
enum SnapshotCommand {
    /// Boot a template VM of a shape (default: the config's sandbox VM) and
    /// snapshot it (no-op when a current template exists); prints its
    /// directory.
    Create {
        /// vCPUs [default: the config's].
        #[arg(long)]
        vcpus: Option<u8>,
        /// Memory in MiB [default: the config's].
        #[arg(long, alias = "memory")]
        memory_mib: Option<u32>,
        /// With a NIC slot, for pods (Kubernetes pods have a NIC). The slot's
        /// MTU is 1500 unless --nic-mtu says more.
        #[arg(long)]
        nic: bool,
        /// The NIC slot's MTU, for pods whose interface MTU is above 1500
        /// (implies --nic).
        #[arg(long, value_parser = clap::value_parser!(u32).range(68..=65532))]
        nic_mtu: Option<u32>,
    },
    /// Remove every VM template.
    Clear,
}

fn check(opts: &standalone::Options) -> anyhow::Result<ExitCode> {
    let config = kata_like_runtime::config::RuntimeConfig::load(opts.config.as_deref())?;
    let findings = kata_like_runtime::check::run(&config);
    for finding in &findings {
        println!("{}", finding.render());
    }
    let failed = findings.iter().filter(|f| f.status == kata_like_runtime::check::Status::Fail).count();
    if failed > 0 {
        println!("{failed} check(s) failed: this host cannot run kata-like yet");
        return Ok(ExitCode::from(1));
    }
    println!("this host can run kata-like");
    Ok(ExitCode::SUCCESS)
}

fn snapshot(opts: &standalone::Options, command: SnapshotCommand) -> anyhow::Result<ExitCode> {
    let config = kata_like_runtime::config::RuntimeConfig::load(opts.config.as_deref())?;
    match command {
        SnapshotCommand::Create { vcpus, memory_mib, nic, nic_mtu } => {
            let pod_mtu = nic_mtu.or(nic.then_some(template::NIC_MTU));
            let shape = template::Shape::for_vm(
                vcpus.unwrap_or(config.vcpus),
                memory_mib.unwrap_or(config.memory_mib),
                pod_mtu,
            );
            let (dir, created) = template::ensure(&config, &shape).map_err(anyhow::Error::msg)?;
            eprintln!("{shape}: {}", if created { "created" } else { "already current" });
            println!("{}", dir.display());
        }
        SnapshotCommand::Clear => {
            let removed = template::clear(&config).map_err(anyhow::Error::msg)?;
            println!("removed {removed} template(s) from {}", template::root(&config).display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Boot a microVM, run a command in it, print its output, power off.
    Exec(ExecArgs),
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    /// Guest kernel [default: $KATA_LIKE_CACHE/artifacts/vmlinux].
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Guest initramfs [default: $KATA_LIKE_CACHE/artifacts/initrd.cpio].
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// The VMM binary [default: kata-like-vmm beside this program].
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    /// Seconds to wait for the agent after the VMM starts.
    #[arg(long, default_value_t = 180)]
    boot_timeout: u64,
    /// Extra kernel parameters.
    #[arg(long)]
    append: Option<String>,
    /// Environment for the command, KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// Working directory of the command in the guest.
    #[arg(long, default_value = "/")]
    cwd: String,
    /// Print boot timings to stderr.
    #[arg(long)]
    timing: bool,
    /// Extra argument for kata-like-vmm, e.g. --vmm-arg=--profile-rip=/tmp/p.txt (repeatable).
    #[arg(long = "vmm-arg", allow_hyphen_values = true)]
    vmm_args: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn exec(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let spec = VmSpec {
        vmm: args.vmm.unwrap_or_else(artifacts::default_vmm),
        kernel: args.kernel.unwrap_or_else(artifacts::default_kernel),
        initrd: args.initrd.unwrap_or_else(artifacts::default_initrd),
        vcpus: args.vcpus,
        memory_mib: args.memory,
        extra_cmdline: args.append,
        boot_timeout: Duration::from_secs(args.boot_timeout),
        state_parent: None,
        vmm_args: args.vmm_args,
        state_dir: None,
        shared: None,
        net: None,
        balloon: true,
        cgroup: None,
        restore_from: None,
        confinement: kata_like_runtime::vm::Confinement::default_for_this_process(),
    };
    let vm = SandboxVm::start(&spec)?;
    if args.timing {
        let t = vm.boot_times();
        eprintln!(
            "kata-like: VMM start -> first KVM_RUN {:?} us, -> guest init (boot timer) {:?} us, -> agent answered {} us; guest kernel {}",
            t.first_kvm_run_us,
            t.boot_timer_us,
            t.agent_ready_us,
            vm.health().kernel_release
        );
    }
    let result = vm.run(&args.command, &args.env, &args.cwd, &[]).context("running the command in the guest")?;
    std::io::stdout().write_all(&result.stdout)?;
    std::io::stderr().write_all(&result.stderr)?;
    vm.shutdown(Duration::from_secs(30)).context("powering the VM off")?;
    let code = if result.signal != 0 { 128 + result.signal } else { result.exit_code };
    Ok(ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    log::init(cli.log.as_deref(), cli.log_format, cli.debug);
    // What a background monitor is given again.
    let mut passed_on = Vec::new();
    if let Some(log) = &cli.log {
        passed_on.push("--log".into());
        passed_on.push(log.clone().into_os_string());
        passed_on.push(
            format!("--log-format={}", if cli.log_format == log::LogFormat::Json { "json" } else { "text" }).into(),
        );
    }
    if cli.debug {
        passed_on.push("--debug".into());
    }
    let opts =
        standalone::Options { root: cli.root, config: cli.config, systemd_cgroup: cli.systemd_cgroup, passed_on };
    // A container's host processes have the container's stdio: their
    // errors go to the log only.
    let quiet = matches!(cli.command, Top::Oci(oci::OciCommand::Monitor { .. } | oci::OciCommand::ExecMonitor { .. }));
    let result = match cli.command {
        Top::Vm(VmCommand::Exec(args)) => exec(args),
        Top::Oci(command) => oci::run(&opts, command),
        Top::Spec { bundle } => standalone::spec(&bundle).map(|_| ExitCode::SUCCESS).map_err(Into::into),
        Top::Snapshot(command) => snapshot(&opts, command),
        Top::Check => check(&opts),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // runc's way: the error in the log (where containerd's runc
            // shim reads it) and on stderr.
            let to_file = opts.passed_on.iter().any(|a| a == "--log");
            if to_file || quiet {
                tracing::error!("{e:#}");
            }
            if !quiet {
                eprintln!("kata-like: error: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}
