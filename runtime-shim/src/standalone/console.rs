//! Terminals: with `--console-socket`, a host pty whose master goes to the
//! caller (Docker's runc shim, conmon) over that Unix socket as runc sends
//! it (SCM_RIGHTS, with the name as data), and whose slave becomes the
//! stdio and controlling terminal of the container's host process. That
//! process bridges the slave to the guest's terminal; a resize of the
//! master reaches it as SIGWINCH. Without a console socket, a terminal
//! container uses the caller's own terminal in raw mode.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::sys::termios;

/// A pty whose master was handed to the caller.
#[derive(Debug)]
pub struct Console {
    /// The slave side, for the host process's stdio.
    pub slave: OwnedFd,
}

/// Opens a pty, sends its master over the Unix socket at `socket` and
/// returns the slave (in raw mode: the guest's pty does the line
/// discipline).
pub fn send_to(socket: &Path) -> Result<Console, String> {
    let pty = nix::pty::openpty(None, None).map_err(|e| format!("opening a pty: {e}"))?;
    let raw = termios::tcgetattr(&pty.slave).map(|mut t| {
        termios::cfmakeraw(&mut t);
        t
    });
    if let Ok(raw) = raw {
        let _ = termios::tcsetattr(&pty.slave, termios::SetArg::TCSANOW, &raw);
    }
    let stream = UnixStream::connect(socket).map_err(|e| format!("console socket {}: {e}", socket.display()))?;
    let name = b"/dev/ptmx";
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(name)],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| format!("sending the pty to console socket {}: {e}", socket.display()))?;
    // The caller has its copy; ours closes here.
    drop(pty.master);
    Ok(Console { slave: pty.slave })
}

/// Restores a terminal's settings when dropped.
#[derive(Debug)]
pub struct RawTty(termios::Termios);

impl Drop for RawTty {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), termios::SetArg::TCSANOW, &self.0);
    }
}

/// Puts the terminal on our stdin, if it is one, in raw mode until the
/// returned guard drops.
pub fn raw_stdin() -> Option<RawTty> {
    let saved = termios::tcgetattr(std::io::stdin()).ok()?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(std::io::stdin(), termios::SetArg::TCSANOW, &raw).ok()?;
    Some(RawTty(saved))
}
