//! Children that die with us: the VMM and virtiofsd.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits,
//! not the process. The shim starts VMs from tokio's blocking pool, whose
//! threads exit after ten idle seconds, which killed every VMM and virtiofsd
//! ten seconds after the last blocking call. So all such children are
//! forked by one thread that lives as long as the process: [`spawn_tied`]
//! hands the [`Command`] to it and waits for the result.
//!
//! No crate offers this (`command-fds`, `nix` and `std` all fork from the
//! calling thread), hence the small hand-written launcher.
//!
//! In the containerd shim, the shim crate's SIGCHLD handler reaps *every*
//! child with `waitpid(-1)`, so `std`'s own wait may find nothing left
//! (ECHILD) and the exit status is gone — that made `iptables` calls fail
//! at random. The shim feeds the exits that handler publishes into
//! [`record_reaped`]; [`try_wait`] and [`output`] fall back to them.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

type Job = (Command, Sender<std::io::Result<Child>>);

/// The launcher thread's queue. The sender lives in a static, so the
/// thread's `recv` never fails and the thread never exits.
static LAUNCHER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

fn launcher() -> &'static Mutex<Sender<Job>> {
    LAUNCHER.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        let spawned = std::thread::Builder::new().name("child-launcher".into()).spawn(move || {
            while let Ok((mut command, reply)) = rx.recv() {
                let _ = reply.send(command.spawn());
            }
        });
        if let Err(e) = spawned {
            // Without the thread every job's reply sender is dropped, and
            // spawn_tied reports the error below to its caller.
            tracing::error!(error = %e, "cannot start the child launcher thread");
        }
        Mutex::new(tx)
    })
}

/// Starts `command` so that the kernel SIGKILLs the child when this process
/// dies, however it dies.
pub fn spawn_tied(mut command: Command) -> std::io::Result<Child> {
    // SAFETY: prctl, sigemptyset and sigprocmask are async-signal-safe and
    // touch only the child's own stack; they make the kernel kill the child
    // when its parent dies, and clear a signal mask the child would
    // otherwise inherit through exec (`kata-like run` blocks the signals
    // it forwards).
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut none = std::mem::zeroed::<libc::sigset_t>();
            libc::sigemptyset(&mut none);
            if libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (tx, rx) = channel();
    let sent = launcher().lock().unwrap_or_else(std::sync::PoisonError::into_inner).send((command, tx));
    let gone = || std::io::Error::other("the child launcher thread is not running");
    sent.map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

/// Exit codes, by PID, of children reaped by another waiter.
struct Reaped {
    codes: Mutex<HashMap<u32, i32>>,
    changed: Condvar,
}

/// Entries kept at most: exits of children nobody asks about (none in the
/// shim today) must not grow the map without bound.
const MAX_REAPED: usize = 1024;

/// How long a waiter that got ECHILD waits for the reaper to publish.
const PUBLISH_GRACE: Duration = Duration::from_secs(2);

fn reaped() -> &'static Reaped {
    static REAPED: OnceLock<Reaped> = OnceLock::new();
    REAPED.get_or_init(|| Reaped { codes: Mutex::new(HashMap::new()), changed: Condvar::new() })
}

/// Records that another waiter reaped `pid` with `code` (the exit status,
/// or 128 + the signal number).
pub fn record_reaped(pid: u32, code: i32) {
    let r = reaped();
    let mut codes = r.codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if codes.len() >= MAX_REAPED {
        codes.clear();
    }
    codes.insert(pid, code);
    r.changed.notify_all();
}

/// The exit of a child that someone else reaped, once it is published.
fn take_reaped(pid: u32, grace: Duration) -> Option<ExitStatus> {
    let r = reaped();
    let deadline = Instant::now() + grace;
    let mut codes = r.codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        if let Some(code) = codes.remove(&pid) {
            return Some(wait_status(code));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        codes = r.changed.wait_timeout(codes, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
    }
}

/// The wait status behind a published code: 128 + N is taken as killed
/// by signal N (the shim crate folds signals so; our children never exit
/// with such codes themselves), else the exit code in the second byte.
fn wait_status(code: i32) -> ExitStatus {
    match code {
        129..=192 => ExitStatus::from_raw(code - 128),
        _ => ExitStatus::from_raw((code & 0xff) << 8),
    }
}

fn is_echild(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECHILD)
}

/// [`Child::try_wait`], also right when another waiter reaped the child.
pub fn try_wait(child: &mut Child) -> std::io::Result<Option<ExitStatus>> {
    match child.try_wait() {
        Err(e) if is_echild(&e) => take_reaped(child.id(), PUBLISH_GRACE).map(Some).ok_or(e),
        other => other,
    }
}

/// [`Child::wait`], also right when another waiter reaped the child.
pub fn wait(child: &mut Child) -> std::io::Result<ExitStatus> {
    match child.wait() {
        Err(e) if is_echild(&e) => take_reaped(child.id(), PUBLISH_GRACE).ok_or(e),
        other => other,
    }
}

/// Runs `command` to completion with stdin closed; its status, stdout and
/// stderr ([`Command::output`], which loses the status to ECHILD).
pub fn output(mut command: Command) -> std::io::Result<std::process::Output> {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let stdout_pipe = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = stdout_pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    });
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_end(&mut stderr)?;
    }
    let stdout = reader.join().unwrap_or_default();
    let status = wait(&mut child)?;
    Ok(std::process::Output { status, stdout, stderr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_codes_become_exit_codes_or_signals() {
        assert_eq!(wait_status(0).code(), Some(0));
        assert_eq!(wait_status(1).code(), Some(1));
        assert_eq!(wait_status(137).signal(), Some(libc::SIGKILL));
        assert_eq!(wait_status(143).signal(), Some(libc::SIGTERM));
        assert_eq!(wait_status(255).code(), Some(255));
    }

    /// A child reaped behind std's back still reports its exit code.
    #[test]
    fn exit_reaped_by_another_waiter_is_found() {
        let mut child = Command::new("sh").args(["-c", "exit 7"]).spawn().expect("spawn sh");
        let pid = child.id();
        let mut status = 0;
        // SAFETY: waitpid on our own child, as the shim's SIGCHLD handler does.
        let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        assert_eq!(reaped, pid as libc::pid_t);
        assert!(child.try_wait().is_err(), "std cannot see it any more");
        record_reaped(pid, libc::WEXITSTATUS(status));
        assert_eq!(try_wait(&mut child).expect("try_wait").and_then(|s| s.code()), Some(7));
    }

    /// Without a published exit, ECHILD is still an error (after the grace).
    #[test]
    fn unpublished_reaped_exit_is_an_error() {
        let pid = Command::new("true").spawn().expect("spawn true").id();
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        assert!(take_reaped(pid, Duration::from_millis(50)).is_none());
    }

    #[test]
    fn output_collects_status_and_streams() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = output(command).expect("output");
        assert_eq!(
            (out.status.code(), out.stdout.as_slice(), out.stderr.as_slice()),
            (Some(3), &b"out\n"[..], &b"err\n"[..])
        );
    }

    /// A child started from a short-lived thread survives that thread.
    #[test]
    fn child_outlives_the_calling_thread() {
        let mut child = std::thread::spawn(|| {
            let mut command = Command::new("sleep");
            command.arg("30");
            spawn_tied(command).expect("spawn sleep")
        })
        .join()
        .expect("thread");
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(child.try_wait().expect("try_wait").is_none(), "sleep died with the thread that asked for it");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }
}
