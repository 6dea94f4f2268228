//! Ending the VM from inside: stop every process, sync, reset. The VMM
//! turns the guest reset (reboot=k, i8042) into a clean exit with status 0.

use std::time::Duration;

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{sync, Pid};

/// How long processes get between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(500);

/// Stops all processes and resets the guest. As PID 1 this never returns;
/// outside a VM (tests) it exits the process instead.
pub fn power_off(is_init: bool, delay: Duration) -> ! {
    // Let the answer to a Shutdown RPC leave through the vsock device.
    std::thread::sleep(delay);
    if !is_init {
        tracing::info!("shutdown requested (not init: exiting)");
        std::process::exit(0);
    }
    tracing::info!("shutting down the guest");
    // pid -1: every process but init.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    std::thread::sleep(TERM_GRACE);
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    sync();
    match reboot(RebootMode::RB_AUTOBOOT) {
        Err(e) => tracing::error!(error = %e, "reboot(2) failed"),
        Ok(never) => match never {},
    }
    // Nothing else can end the VM; stay alive so the kernel does not panic.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
