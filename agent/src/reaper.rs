//! Child reaping for PID 1, and the agent's signal loop.
//!
//! As init, the agent inherits every orphan in the guest and must reap them
//! all, yet still hand the exit status of processes it started to whoever
//! waits for them. One loop owns `waitpid(-1)`: it dispatches statuses of
//! registered children and drops the rest. Registration happens under the
//! same lock as the spawn, so a child that exits immediately is never reaped
//! before its waiter is known.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals the agent handles synchronously in its main loop.
pub const HANDLED_SIGNALS: [Signal; 6] =
    [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1, Signal::SIGUSR2, Signal::SIGPWR];

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitState {
    /// exit(code).
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

/// Registered children and where their exit status goes.
#[derive(Debug, Default)]
pub struct Reaper {
    waiters: Mutex<HashMap<i32, SyncSender<ExitState>>>,
}

impl Reaper {
    /// An empty reaper.
    pub fn new() -> Self {
        Reaper::default()
    }

    /// Spawns `command` and registers it; the receiver gets its exit state.
    pub fn spawn(&self, command: &mut Command) -> std::io::Result<(Child, Receiver<ExitState>)> {
        let mut waiters = self.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let child = command.spawn()?;
        let (tx, rx) = sync_channel(1);
        waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Runs `fork` (which starts a child and returns its PID and `T`) with
    /// the registry locked, and registers the child: an immediate exit is
    /// still delivered to the returned receiver.
    pub fn register<T>(
        &self,
        fork: impl FnOnce() -> Result<(i32, T), String>,
    ) -> Result<((i32, Receiver<ExitState>), T), String> {
        let mut waiters = self.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (pid, extra) = fork()?;
        let (tx, rx) = sync_channel(1);
        waiters.insert(pid, tx);
        Ok(((pid, rx), extra))
    }

    /// Reaps every exited child without blocking.
    pub fn reap(&self) {
        loop {
            let (pid, state) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitState::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, ExitState::Signaled(signal as i32)),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
            };
            let waiter = self.waiters.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&pid.as_raw());
            match waiter {
                // The waiter may have given up; the status is then dropped.
                Some(tx) => drop(tx.try_send(state)),
                None => tracing::debug!(pid = pid.as_raw(), ?state, "reaped an orphan"),
            }
        }
    }
}

/// Blocks [`HANDLED_SIGNALS`] in this thread (threads spawned later inherit
/// the mask; children get a clean one from `std::process::Command`) and
/// returns a signalfd for them.
pub fn block_signals() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    for signal in HANDLED_SIGNALS {
        set.add(signal);
    }
    set.thread_block()?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)
}

/// Runs forever: reaps children on SIGCHLD and calls `on_stop` for the
/// signals busybox's halt/poweroff/reboot (and the kernel's ctrl-alt-del)
/// send to init.
pub fn signal_loop(reaper: &Reaper, signals: &SignalFd, on_stop: impl Fn(Signal)) -> ! {
    loop {
        match signals.read_signal() {
            Ok(Some(info)) => match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => reaper.reap(),
                Ok(signal) => on_stop(signal),
                Err(_) => {}
            },
            Ok(None) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                // A broken signalfd would leave zombies behind; poll instead.
                tracing::error!(error = %e, "signalfd read failed");
                std::thread::sleep(std::time::Duration::from_millis(100));
                reaper.reap();
            }
        }
    }
}

/// The one reaper of a test process: tests run on threads of one process,
/// and `waitpid(-1)` must have a single owner there as in the guest.
#[cfg(test)]
pub fn shared_for_tests() -> &'static Reaper {
    static REAPER: std::sync::OnceLock<&'static Reaper> = std::sync::OnceLock::new();
    REAPER.get_or_init(|| {
        let reaper: &'static Reaper = Box::leak(Box::new(Reaper::new()));
        std::thread::spawn(move || loop {
            reaper.reap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        });
        reaper
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn exit_codes_and_signals_reach_the_waiter() {
        let reaper = shared_for_tests();
        let (_child, rx) = reaper.spawn(Command::new("/bin/sh").args(["-c", "exit 7"])).expect("spawn");
        let (_killed, rx2) = reaper.spawn(Command::new("/bin/sh").args(["-c", "kill -9 $$"])).expect("spawn");
        let timeout = Duration::from_secs(10);
        assert_eq!(rx.recv_timeout(timeout).expect("exit status"), ExitState::Exited(7));
        assert_eq!(rx2.recv_timeout(timeout).expect("exit status"), ExitState::Signaled(9));
    }
}
