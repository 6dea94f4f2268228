//! `kata-like-agent`: the in-guest agent, run as PID 1 (`/init` of the
//! initramfs) by the kata-like guest kernel.
//!
//! As init it mounts the base file systems, writes the boot-timer marker,
//! serves the agent API over vsock port 1024 and spends its main thread
//! reaping children and handling power signals.
//!
//! `kata-like-agent --listen unix:///path` serves on a Unix socket without
//! doing any init work, for tests on the host.

mod init;
mod process;
mod reaper;
mod service;
mod shutdown;

use std::sync::Arc;
use std::time::Duration;

use kata_like_protocol::AGENT_VSOCK_PORT;

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
    // Block the handled signals before any thread exists, so that they all
    // arrive on the signalfd below.
    let signals = match reaper::block_signals() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("kata-like-agent: cannot set up signal handling: {e}");
            std::process::exit(1);
        }
    };
    if is_init {
        // First, so the VMM's boot timer measures kernel boot, not our setup.
        // The console line marks the same moment for VMMs without a boot
        // timer (the QEMU baseline in docs/benchmarks.md).
        init::signal_boot_timer();
        eprintln!("kata-like-agent: init started");
        init::mount_base();
    }
    init_logging(is_init);

    let reaper = Arc::new(Reaper::new());
    let service = service::methods(Arc::new(service::Agent::new(reaper.clone(), is_init)));
    let server = ttrpc::Server::new().bind(&address).map(|s| s.register_service(service));
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
