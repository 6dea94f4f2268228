//! The host processes of a sandbox VM (the VMM and virtiofsd): stopping
//! them, telling a kill from a failure, and the fail-stop tie between them.
//!
//! The shim crate's SIGCHLD handler reaps every child, so statuses come
//! through [`crate::vm::child::try_wait`], which can hand each out only once.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long a VMM gets after SIGTERM (to remove its socket, flush logs)
/// before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Stops a VMM: SIGTERM (it removes its socket, flushes its console), then
/// SIGKILL if it is still there after [`TERM_GRACE`]; reaps it either way.
pub(crate) fn stop(child: &mut Child) {
    // An error means the child was reaped already and its status taken
    // (by an earlier check): it is gone, and its PID may be someone
    // else's by now, so it must not be signalled.
    if !matches!(crate::vm::child::try_wait(child), Ok(None)) {
        return;
    }
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child, which is not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        if !matches!(crate::vm::child::try_wait(child), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = crate::vm::child::wait(child);
}

/// A descriptor for process `pid` that stays valid after the process is
/// reaped (pidfd_open), so a signal can never hit a recycled PID.
fn pidfd(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor
    // or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a non-negative result is a fresh descriptor we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Fail-stop: a VM whose virtiofsd died cannot read or write its files
/// any more (its FUSE requests would hang), so the VMM is killed as well
/// and the VM's death is what its owner sees (every container's task exits
/// with 255). A thread waits on both processes and ends with either.
///
/// Fails when virtiofsd is already gone (and reaped): the VM cannot be
/// used, and its start must fail.
pub(crate) fn tie_vmm_to_virtiofsd(vmm: u32, virtiofsd: u32) -> Result<(), String> {
    const VMM_EXIT_GRACE_MS: i32 = 500;
    let fsd_fd = match pidfd(virtiofsd) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
            return Err(format!("virtiofsd (pid {virtiofsd}) exited before its VM was ready"));
        }
        Err(e) => {
            log::warn!("pidfd_open(virtiofsd): {e}; a dead virtiofsd will not stop its VM");
            return Ok(());
        }
    };
    let vmm_fd = match pidfd(vmm) {
        Ok(fd) => fd,
        // A VMM already gone is reported by whoever waits for it.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => {
            log::warn!("pidfd_open(VMM): {e}; a dead virtiofsd will not stop its VM");
            return Ok(());
        }
    };
    let spawned = std::thread::Builder::new().name("virtiofsd-watch".into()).spawn(move || {
        use std::os::fd::AsRawFd;
        let mut fds = [
            libc::pollfd { fd: vmm_fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: fsd_fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        loop {
            // SAFETY: poll on two valid pollfds we own, no timeout.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if fds[1].revents != 0 && fds[0].revents == 0 {
            // virtiofsd also exits when a VMM that is shutting down closes
            // the vhost-user socket: give that VMM a moment to finish.
            let mut vmm_only = [libc::pollfd { fd: vmm_fd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            // SAFETY: poll on one valid pollfd we own, bounded timeout.
            if unsafe { libc::poll(vmm_only.as_mut_ptr(), 1, VMM_EXIT_GRACE_MS) } > 0 {
                return;
            }
            log::error!("virtiofsd (pid {virtiofsd}) exited; stopping its VM (VMM pid {vmm})");
            // SAFETY: pidfd_send_signal on the VMM's pidfd; a VMM that has
            // exited meanwhile makes it fail harmlessly (ESRCH).
            unsafe {
                libc::syscall(libc::SYS_pidfd_send_signal, vmm_fd.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0)
            };
        }
    });
    if let Err(e) = spawned {
        log::warn!("cannot watch virtiofsd ({e}); a dead virtiofsd will not stop its VM");
    }
    Ok(())
}

/// How long a failed start waits for a VMM whose virtiofsd went first.
pub(crate) const VMM_EXIT_WAIT: Duration = Duration::from_secs(1);

/// The exit status of `child` if it exits within `wait`.
pub(crate) fn exit_within(child: &mut Child, wait: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + wait;
    loop {
        match crate::vm::child::try_wait(child) {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// Whether a status is that of a process killed by someone (SIGKILL,
/// SIGTERM, SIGINT) rather than one that failed (an exit code, a crash).
pub(crate) fn killed_from_outside(status: ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    matches!(status.signal(), Some(libc::SIGKILL | libc::SIGTERM | libc::SIGINT))
}
