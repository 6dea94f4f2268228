//! How and why the VM ends. vCPU threads, the i8042 reset and host signals
//! all report here; the first reason wins and wakes the VMM thread.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why the VMM stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset or powered off (i8042 reset): a clean end.
    GuestShutdown,
    /// The guest or KVM failed (emulation failure, triple fault, ...).
    Fatal(String),
    /// The VMM received a termination signal.
    Signal(i32),
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestShutdown => 0,
            ExitReason::Fatal(_) => 1,
            ExitReason::Signal(signo) => 128 + signo,
        }
    }
}

/// The shared "stop the VM" flag with an eventfd for the event loop.
#[derive(Debug)]
pub struct ExitSignal {
    evt: EventFd,
    reason: Mutex<Option<ExitReason>>,
}

impl ExitSignal {
    /// A signal nobody has raised yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitSignal { evt: EventFd::new(libc::EFD_NONBLOCK)?, reason: Mutex::new(None) })
    }

    /// The eventfd the VMM thread polls.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }

    /// Requests the VM to stop; later requests do not replace the first.
    pub fn request(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(reason);
        }
        // The eventfd can only fail when its counter would overflow.
        let _ = self.evt.write(1);
    }

    /// The reason, once requested.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let exit = ExitSignal::new().expect("eventfd");
        assert_eq!(exit.reason(), None);
        exit.request(ExitReason::Fatal("emulation failure".into()));
        exit.request(ExitReason::GuestShutdown);
        assert_eq!(exit.reason(), Some(ExitReason::Fatal("emulation failure".into())));
        assert_eq!(exit.event().read().expect("woken"), 2);
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
    }
}
