//! Signals to a container's init right after it starts.
//!
//! The init is PID 1 of its PID namespace, so the kernel drops every signal
//! it has no handler for (SIGKILL and SIGSTOP from the agent excepted).
//! Under runc a program installs its handlers within a millisecond of
//! `start` returning; in a microVM its start-up (exec, page faults, the
//! dynamic loader, a shell parsing its `trap`) runs on the guest kernel and
//! takes far longer, and kubelet sends SIGTERM whenever it decides to stop
//! the container, even 1 ms after StartContainer. So a signal the kernel
//! would drop in the first [`HOLD`] after start is held and delivered as
//! soon as the program catches (or blocks) it; a program that has not done
//! so by then never will in practice, and the signal is dropped as the
//! kernel would.
//!
//! Before exec the child catches the terminating signals itself
//! (`launch::child`), so a Kill between create and start ends it as it
//! ends runc's init.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How long after start a dropped signal is held.
pub const HOLD: Duration = Duration::from_secs(30);

/// What a process does with a signal, from /proc/<pid>/status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// A handler is installed.
    Caught,
    /// Blocked: the kernel queues it.
    Blocked,
    /// SIG_IGN.
    Ignored,
    /// SIG_DFL.
    Default,
}

/// Parses a `/proc/<pid>/status` text: whether the process is the init of
/// its PID namespace, and its disposition of `sig`.
pub fn parse_status(status: &str, sig: i32) -> Option<(bool, Disposition)> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let mask = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok());
    let bit = 1u64 << (sig - 1);
    let (blocked, ignored, caught) = (mask("SigBlk:")?, mask("SigIgn:")?, mask("SigCgt:")?);
    let ns_init = field("NSpid:").and_then(|v| v.split_whitespace().last()) == Some("1");
    let disposition = if caught & bit != 0 {
        Disposition::Caught
    } else if blocked & bit != 0 {
        Disposition::Blocked
    } else if ignored & bit != 0 {
        Disposition::Ignored
    } else {
        Disposition::Default
    };
    Some((ns_init, disposition))
}

fn read(pid: i32, sig: i32) -> Option<(bool, Disposition)> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, sig)
}

/// Whether the kernel would drop `sig` sent to `pid` now.
fn dropped(pid: i32, sig: Signal) -> bool {
    if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
        return false;
    }
    matches!(read(pid, sig as i32), Some((true, Disposition::Default)))
}

/// Sends `sig` to the init `pid`, which started at `started`; holds it as
/// the module doc says when the kernel would drop it. `exited` says whether
/// the process has ended (then a held signal is forgotten).
pub fn to_init(
    pid: i32,
    sig: Signal,
    started: Option<Instant>,
    exited: impl Fn() -> bool + Send + 'static,
) -> nix::Result<()> {
    let holding = started.is_some_and(|t| t.elapsed() < HOLD) && dropped(pid, sig);
    if !holding {
        return nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
    let Some(started) = started else { return Ok(()) };
    tracing::info!(pid, %sig, "the init has no handler yet: signal held until it has one");
    let spawned = std::thread::Builder::new().name(format!("hold-{pid}")).spawn(move || {
        let mut pause = Duration::from_millis(10);
        while started.elapsed() < HOLD && !exited() {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
            match read(pid, sig as i32) {
                Some((_, Disposition::Caught | Disposition::Blocked)) => {
                    if !exited() {
                        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
                        tracing::info!(pid, %sig, "held signal delivered");
                    }
                    return;
                }
                Some((_, Disposition::Ignored)) | None => return,
                Some((_, Disposition::Default)) => {}
            }
        }
        tracing::info!(pid, %sig, "held signal dropped: the init never handled it");
    });
    if let Err(e) = spawned {
        tracing::warn!(pid, error = %e, "cannot hold the signal; sending it now");
        return nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tsh\nNSpid:\t412\t1\nSigQ:\t0/1\nSigPnd:\t0000000000000000\n\
                          SigBlk:\t0000000000000000\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000002002\n";

    #[test]
    fn dispositions_and_namespace_init_are_read_from_status() {
        assert_eq!(parse_status(STATUS, libc::SIGTERM), Some((true, Disposition::Default)));
        assert_eq!(parse_status(STATUS, libc::SIGINT), Some((true, Disposition::Caught)));
        assert_eq!(parse_status(STATUS, libc::SIGQUIT), Some((true, Disposition::Ignored)));
        assert_eq!(parse_status(STATUS, libc::SIGALRM), Some((true, Disposition::Caught)));
        let not_init = STATUS.replace("NSpid:\t412\t1", "NSpid:\t412\t7");
        assert_eq!(parse_status(&not_init, libc::SIGTERM), Some((false, Disposition::Default)));
        assert_eq!(parse_status("Name:\tx\n", libc::SIGTERM), None);
    }

    #[test]
    fn a_process_outside_a_new_pid_namespace_gets_the_signal_at_once() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id() as i32;
        to_init(pid, Signal::SIGTERM, Some(Instant::now()), || false).expect("kill");
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }
}
