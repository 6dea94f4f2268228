//! Signals of the container's host processes: every signal they can catch
//! is forwarded to their process in the guest, as runc's init gets the
//! signals sent to its PID; and they end the way their guest process did.

use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

use crate::sandbox::GuestLink;

/// Not forwarded: SIGCHLD is about our own children (the VMM, virtiofsd),
/// SIGWINCH resizes the guest terminal instead, SIGPIPE is raised by our
/// own writes and SIGURG by out-of-band socket data. SIGKILL and SIGSTOP
/// cannot be caught: SIGKILL ends the VM with us.
const NOT_FORWARDED: [Signal; 6] =
    [Signal::SIGCHLD, Signal::SIGWINCH, Signal::SIGPIPE, Signal::SIGURG, Signal::SIGKILL, Signal::SIGSTOP];

/// The signals a host process forwards.
pub fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for signal in Signal::iterator().filter(|s| !NOT_FORWARDED.contains(s)) {
        set.add(signal);
    }
    set
}

/// Blocks the forwarded signals and SIGWINCH in the calling thread; call
/// before any thread starts so that every thread inherits the mask and the
/// signals wait for [`forward`]. (Children the VM code spawns get a clean
/// mask, see vm/child.rs.)
pub fn block() -> Result<SigSet, String> {
    let mut set = forwarded();
    set.add(Signal::SIGWINCH);
    set.thread_block().map_err(|e| format!("blocking signals: {e}"))?;
    Ok(set)
}

/// Forwards the blocked signals to process `exec_id` ("" = init) of
/// container `id` for as long as this process lives; SIGWINCH sends the
/// size of the terminal on our stdin when `terminal`.
pub fn forward(link: &GuestLink, rpc_timeout: Duration, id: &str, exec_id: &str, set: SigSet, terminal: bool) {
    let (id, exec_id) = (id.to_string(), exec_id.to_string());
    let client = match link.long_poll_client() {
        Ok(client) => client.with_rpc_timeout(rpc_timeout),
        Err(e) => return tracing::warn!(error = %e, "signals will not be forwarded"),
    };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        while let Ok(signal) = set.wait() {
            let sent = if signal == Signal::SIGWINCH {
                if !terminal {
                    continue;
                }
                let (w, h) = window_size().unwrap_or((80, 24));
                client.resize_tty(&id, &exec_id, w, h)
            } else {
                client.signal_process(&id, &exec_id, signal as u32, false)
            };
            if let Err(e) = sent {
                tracing::warn!(?signal, error = %e, "cannot forward the signal");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the signal forwarding thread");
    }
}

/// The size of the terminal on our stdin, if it is one.
pub fn window_size() -> Option<(u32, u32)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
    let r = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then(|| (u32::from(ws.ws_col), u32::from(ws.ws_row)))
}

/// Ends this process the way its guest process ended: `status` is the
/// guest's (code, or 128 + N for signal N). A signal death is repeated on
/// ourselves, so a caller's wait(2) sees WIFSIGNALED with the same signal,
/// as it would for runc's init; codes above 128 that are not signals, and
/// signals that would not end us, become the exit code.
pub fn exit_like(status: u32) -> ! {
    if let Some(signal) = status.checked_sub(128).and_then(|n| Signal::try_from(n as i32).ok()) {
        if !matches!(
            signal,
            Signal::SIGCHLD
                | Signal::SIGWINCH
                | Signal::SIGURG
                | Signal::SIGCONT
                | Signal::SIGSTOP
                | Signal::SIGTSTP
                | Signal::SIGTTIN
                | Signal::SIGTTOU
        ) {
            // No core file of ours for the guest's SIGQUIT or SIGSEGV.
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
            // SAFETY: resetting a disposition to the default is always sound.
            let _ = unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
            let mut only = SigSet::empty();
            only.add(signal);
            let _ = nix::sys::signal::raise(signal);
            let _ = only.thread_unblock();
            // Other threads may have it blocked; ours now has it pending
            // and unblocked, so it is delivered here.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::process::exit(i32::try_from(status.min(255)).unwrap_or(255))
}
