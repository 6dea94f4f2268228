//! An eventfd as a vm-superio interrupt/reset trigger.
//!
//! Registered with KVM_IRQFD it raises a guest interrupt line; polled by the
//! event loop it signals the VMM (the i8042 reset).

use std::ops::Deref;

use vmm_sys_util::eventfd::EventFd;

/// Wraps an [`EventFd`] so vm-superio devices can signal through it.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

impl Deref for EventFdTrigger {
    type Target = EventFd;
    fn deref(&self) -> &EventFd {
        &self.0
    }
}
