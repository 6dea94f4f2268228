//! `kata-like-agent`: the in-guest agent, started as PID 1 (`/init` of the
//! initramfs) by the kata-like guest kernel.
//!
//! As init it writes the boot-timer marker, mounts the base file systems
//! and forks: PID 1 stays behind to end the VM if the agent ever dies
//! ([`pid1`]); the child, the agent, serves the agent API over vsock port
//! 1024 and spends its main thread reaping children and handling power
//! signals. Below, `is_init` means "started as the guest's init".
//!
//! `kata-like-agent --listen unix:///path` serves on a Unix socket without
//! doing any init work, for tests on the host.

mod container;
mod forward;
mod host_env;
mod init;
mod network;
mod pid1;
mod process;
mod reaper;
mod sandbox;
mod service;
mod shutdown;
mod storage;

use std::sync::Arc;
use std::time::Duration;

use kata_like_protocol::{AGENT_VSOCK_PORT, FORWARD_VSOCK_PORT, IO_VSOCK_PORT};

use crate::reaper::Reaper;

fn init_logging(is_init: bool) {
    let builder = tracing_subscriber::fmt().without_time().with_target(false).with_ansi(false);
    // As init, log to the console (the VMM's serial output).
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(console) if is_init => builder.with_writer(std::sync::Mutex::new(console)).init(),
        _ => builder.with_writer(std::io::stderr).init(),
    }
}

/// As PID 1, the agent serves on vsock and ignores its arguments: the
/// kernel passes unknown command-line parameters to init as arguments.
/// Otherwise `--listen ADDR` is required.
fn listen_address(is_pid1: bool) -> Result<String, String> {
    if is_pid1 {
        return Ok(format!("vsock://-1:{AGENT_VSOCK_PORT}"));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, addr] if flag == "--listen" => Ok(addr.clone()),
        _ => {
            Err("kata-like-agent: runs as PID 1 in the guest; elsewhere: kata-like-agent --listen unix:///path".into())
        }
    }
}

fn main() {
    let is_init = std::process::id() == 1;
    let address = match listen_address(is_init) {
        Ok(address) => address,
        Err(usage) => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    if is_init {
        // First, so the VMM's boot timer measures kernel boot, not our setup.
        // The console line marks the same moment for VMMs without a boot
        // timer (the QEMU baseline in docs/benchmarks.md).
        init::signal_boot_timer();
        eprintln!("kata-like-agent: init started");
        init::mount_base();
        // PID 1 stays behind, supervising; the agent goes on below.
        pid1::start_agent();
    }
    // Block the handled signals before any thread exists, so that they all
    // arrive on the signalfd below.
    let signals = match reaper::block_signals() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("kata-like-agent: cannot set up signal handling: {e}");
            std::process::exit(1);
        }
    };
    init_logging(is_init);

    let reaper = Arc::new(Reaper::new());
    let io = Arc::new(container::stdio::IoHub::default());
    // As init: stdio on vsock, shared fs and cgroups at their guest places.
    // Elsewhere (host tests): stdio on `<socket>.io`, paths from the
    // environment.
    let unix_path = address.strip_prefix("unix://").map(std::path::PathBuf::from);
    let io_listener = if is_init {
        container::stdio::listen(Some(IO_VSOCK_PORT), None)
    } else {
        let path = unix_path.as_ref().map(|p| p.with_extension("io"));
        container::stdio::listen(None, path.as_deref())
    };
    match io_listener {
        Ok(fd) => io.serve(fd),
        Err(e) => tracing::error!(error = %e, "cannot listen for stdio streams; containers cannot start"),
    }
    if is_init {
        match container::stdio::listen(Some(FORWARD_VSOCK_PORT), None) {
            Ok(fd) => forward::serve(fd),
            Err(e) => tracing::error!(error = %e, "cannot listen for port forwards"),
        }
    }
    let env_path = |key: &str, default: &str| std::env::var_os(key).map(Into::into).unwrap_or_else(|| default.into());
    let containers = Arc::new(container::Containers::new(
        reaper.clone(),
        io,
        if is_init { sandbox::SHARED_MOUNT.into() } else { env_path("KATA_LIKE_AGENT_SHARED", sandbox::SHARED_MOUNT) },
        if is_init { "/sys/fs/cgroup".into() } else { env_path("KATA_LIKE_AGENT_CGROUP", "/sys/fs/cgroup") },
    ));
    let service = service::methods(Arc::new(service::Agent::new(reaper.clone(), containers, is_init)));
    // Long polls (WaitProcess, GetOomEvent) each hold a handler thread.
    let server = ttrpc::Server::new().set_thread_count_max(256).bind(&address).map(|s| s.register_service(service));
    let mut server = match server {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(address, error = %e, "cannot listen");
            if is_init {
                // PID 1 must not exit: leave the VM to be stopped from outside.
                reaper::signal_loop(&reaper, &signals, |_| shutdown::power_off(true, Duration::ZERO));
            }
            std::process::exit(1);
        }
    };
    if let Err(e) = server.start() {
        tracing::error!(address, error = %e, "cannot start the ttrpc server");
        if !is_init {
            std::process::exit(1);
        }
    }
    tracing::info!(address, version = env!("CARGO_PKG_VERSION"), "agent ready");
    reaper::signal_loop(&reaper, &signals, |signal| {
        tracing::info!(?signal, "power signal");
        shutdown::power_off(is_init, Duration::ZERO)
    });
}
