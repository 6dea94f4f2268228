//! One container process: its PID, its exit (delivered by the reaper) and,
//! with a terminal, the pty master.

use std::os::fd::OwnedFd;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex};

use super::cgroup::Cgroup;
use super::lock;
use crate::reaper::ExitState;

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// The code, or 128 + signal.
    pub status: u32,
    /// Wall clock of the exit, ns since the epoch.
    pub at_ns: u64,
    /// The container cgroup had OOM kills by then.
    pub oom_killed: bool,
}

/// A process of a container.
#[derive(Debug)]
pub struct Proc {
    pid: i32,
    exit: Mutex<Option<Exit>>,
    exited: Condvar,
    tty: Option<OwnedFd>,
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Proc {
    /// Tracks `pid`, whose exit arrives on `exit`; `cgroup` (for the init)
    /// is checked for OOM kills at exit.
    pub fn new(pid: i32, exit: Receiver<ExitState>, tty: Option<OwnedFd>, cgroup: Option<Cgroup>) -> Arc<Proc> {
        let proc = Arc::new(Proc { pid, exit: Mutex::new(None), exited: Condvar::new(), tty });
        let watcher = proc.clone();
        let spawned = std::thread::Builder::new().name(format!("wait-{pid}")).spawn(move || {
            let state = exit.recv().unwrap_or(ExitState::Signaled(libc::SIGKILL));
            let status = match state {
                ExitState::Exited(code) => code as u32,
                ExitState::Signaled(sig) => 128 + sig as u32,
            };
            let oom_killed = cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
            *lock(&watcher.exit) = Some(Exit { status, at_ns: now_ns(), oom_killed });
            watcher.exited.notify_all();
        });
        if let Err(e) = spawned {
            tracing::error!(pid, error = %e, "cannot start the exit watcher; the exit will not be reported");
        }
        proc
    }

    /// Guest PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The exit, if it happened.
    pub fn exited(&self) -> Option<Exit> {
        *lock(&self.exit)
    }

    /// Blocks until the process exits.
    pub fn wait(&self) -> Exit {
        let mut exit = lock(&self.exit);
        loop {
            if let Some(e) = *exit {
                return e;
            }
            exit = self.exited.wait(exit).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sets the terminal size.
    pub fn resize(&self, width: u32, height: u32) -> Result<(), String> {
        let tty = self.tty.as_ref().ok_or("the process has no terminal")?;
        let ws = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer on our fd.
        let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(tty), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(format!("TIOCSWINSZ: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}
