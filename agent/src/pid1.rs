//! The guest's PID 1: it starts the agent as its child and ends the VM
//! when the agent ends.
//!
//! The agent used to be PID 1 itself. Then nothing could stop it but a
//! crash, and a crash of PID 1 is a kernel panic. As a child, the agent can
//! die like any process (a bug, a SIGKILL, the OOM killer if its
//! protection were ever lifted) and PID 1 turns that into the same clean
//! end as a guest power-off: it says why on the console, stops what is
//! left and resets the VM, so the host sees the VMM exit and reports every
//! container as exited. Restarting the agent would not help: the
//! containers' stdio, waiters and the host's connections die with it.
//!
//! The agent is a child subreaper, so orphans of containers still reparent
//! to it, and its OOM score is the lowest (-1000): a container filling the
//! guest's memory is killed, never the agent. PID 1 forwards the power
//! signals busybox's `poweroff`/`reboot` send to it, so the agent's orderly
//! shutdown still runs.

use std::time::Duration;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::reaper::HANDLED_SIGNALS;

/// The agent's `oom_score_adj`: never chosen by the OOM killer.
const AGENT_OOM_SCORE_ADJ: &str = "-1000";

/// Forks the agent off PID 1. Returns in the child, which goes on as the
/// agent; PID 1 stays in [`supervise`] for good. If the fork fails, the
/// agent runs as PID 1 itself (as before) and says so.
pub fn start_agent() {
    // Block what the agent's signal loop handles before forking, so the
    // child starts with the mask it always had, and PID 1 gets these on
    // its own signalfd.
    let mut set = SigSet::empty();
    for signal in HANDLED_SIGNALS {
        set.add(signal);
    }
    if let Err(e) = set.thread_block() {
        eprintln!("kata-like-agent: init: cannot block signals ({e}); the agent runs as PID 1");
        return;
    }
    // SAFETY: PID 1 has one thread here (nothing has spawned any), so the
    // child may run arbitrary code after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => become_agent(),
        Ok(ForkResult::Parent { child }) => supervise(child, set),
        Err(e) => eprintln!("kata-like-agent: init: cannot fork the agent ({e}); the agent runs as PID 1"),
    }
}

fn become_agent() {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        eprintln!("kata-like-agent: cannot become a child subreaper: {}", std::io::Error::last_os_error());
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", AGENT_OOM_SCORE_ADJ) {
        eprintln!("kata-like-agent: cannot protect the agent from the OOM killer: {e}");
    }
}

/// How the agent ended, for the console.
fn describe(status: WaitStatus) -> Option<String> {
    match status {
        WaitStatus::Exited(_, code) => Some(format!("exited with status {code}")),
        WaitStatus::Signaled(_, signal, _) => Some(format!("was killed by {signal}")),
        _ => None,
    }
}

/// PID 1 from here on: reaps, forwards power signals to the agent, and
/// ends the VM once the agent is gone.
fn supervise(agent: Pid, set: SigSet) -> ! {
    let signals = match SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC) {
        Ok(fd) => Some(fd),
        Err(e) => {
            eprintln!("kata-like-agent: init: no signalfd ({e}); polling for the agent's exit");
            None
        }
    };
    loop {
        let signal = match &signals {
            Some(fd) => match fd.read_signal() {
                Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
                _ => None,
            },
            None => {
                std::thread::sleep(Duration::from_millis(200));
                Some(Signal::SIGCHLD)
            }
        };
        match signal {
            Some(Signal::SIGCHLD) | None => {}
            Some(power) => {
                if kill(agent, power).is_err() {
                    end_vm("the agent is gone and a power signal arrived");
                }
                continue;
            }
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) if status.pid() == Some(agent) => {
                    let how = describe(status).unwrap_or_else(|| format!("{status:?}"));
                    end_vm(&format!("the agent (pid {agent}) {how}"));
                }
                Ok(_) => {}
            }
        }
    }
}

/// Stops every process left and resets the VM (the VMM exits cleanly).
fn end_vm(why: &str) -> ! {
    eprintln!("kata-like-agent: init: {why}; ending the VM");
    // pid -1: everything but PID 1.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    nix::unistd::sync();
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Err(e) => eprintln!("kata-like-agent: init: reboot(2) failed: {e}"),
        Ok(never) => match never {},
    }
    // PID 1 must not exit (that panics the kernel); wait to be stopped.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_says_how_the_agent_ended() {
        let pid = Pid::from_raw(42);
        assert_eq!(describe(WaitStatus::Exited(pid, 3)).as_deref(), Some("exited with status 3"));
        assert_eq!(
            describe(WaitStatus::Signaled(pid, Signal::SIGKILL, false)).as_deref(),
            Some("was killed by SIGKILL")
        );
        assert_eq!(describe(WaitStatus::StillAlive), None);
    }
}
