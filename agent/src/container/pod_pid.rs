//! The pod's shared PID namespace (Kubernetes' shareProcessNamespace).
//!
//! Under runc the pod's containers join the pause container's PID
//! namespace: pause is PID 1, reaps orphans and outlives every container.
//! No pause container runs in our VM, so on first use the agent forks the
//! same thing: PID 1 of a new PID namespace that only reaps, and binds its
//! namespace at [`GUEST_POD_PID_NS`], where the container specs the shim
//! rewrote name it.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Mutex;

pub use kata_like_protocol::GUEST_POD_PID_NS;

use crate::reaper::Reaper;

static STARTED: Mutex<bool> = Mutex::new(false);

extern "C" fn wake(_: libc::c_int) {}

/// The reaper loop of the pod's PID 1. Only system calls.
///
/// # Safety
/// Must only be called in a freshly forked child; never returns.
unsafe fn pause_child() -> ! {
    // SAFETY: system calls on the child's own state; `set` lives on the
    // stack for every call that reads it.
    unsafe {
        // Nothing of the agent's (vsock connections, stdio streams) may
        // stay open in a process that never execs.
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        libc::setsid();
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGCHLD, wake as *const () as libc::sighandler_t);
        libc::sigemptyset(&mut set);
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            libc::sigsuspend(&set);
        }
    }
}

/// Starts the pod's PID 1 unless it runs, and binds its PID namespace at
/// `target`.
pub fn ensure(reaper: &Reaper, target: &Path) -> Result<(), String> {
    let mut started = super::lock(&STARTED);
    if *started {
        return Ok(());
    }
    let ((pid, exit), ()) = reaper.register(|| {
        std::thread::Builder::new()
            .name("pod-pid-ns".into())
            .spawn(|| -> Result<(i32, ()), String> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
                    .map_err(|e| format!("create the pod's PID namespace: {e}"))?;
                // SAFETY: fork in a multi-threaded process; the child only
                // makes system calls (`pause_child`).
                match unsafe { libc::fork() } {
                    -1 => Err(format!("fork the pod's PID 1: {}", std::io::Error::last_os_error())),
                    // SAFETY: we are the freshly forked child.
                    0 => unsafe { pause_child() },
                    pid => Ok((pid, ())),
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?
            .join()
            .map_err(|_| "the fork thread panicked".to_string())?
    })?;
    std::thread::spawn(move || {
        let state = exit.recv();
        tracing::warn!(pid, ?state, "the pod's PID 1 ended");
    });
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let _file: OwnedFd = std::fs::File::create(target).map_err(|e| format!("{}: {e}", target.display()))?.into();
    let source = format!("/proc/{pid}/ns/pid");
    nix::mount::mount(Some(source.as_str()), target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| format!("bind {source} at {}: {e}", target.display()))?;
    *started = true;
    tracing::info!(pid, "the pod's PID namespace started");
    Ok(())
}

/// Whether a spec joins the pod's PID namespace.
pub fn wanted(spec: &oci_spec::runtime::Spec) -> bool {
    spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).is_some_and(|list| {
        list.iter().any(|n| {
            n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid
                && n.path().as_deref() == Some(Path::new(GUEST_POD_PID_NS))
        })
    })
}
