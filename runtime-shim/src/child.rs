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

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};

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

#[cfg(test)]
mod tests {
    use super::*;

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
