//! Wires the net device into the VMM thread's event-manager loop: the two
//! queue eventfds (guest kicks) and the backend's readability.
//!
//! The tap is polled only while the device is active and the guest has RX
//! buffers: a readable tap with nowhere to put its frames would otherwise
//! wake the loop forever. An RX kick (new buffers) turns polling back on.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Net, RXQ, TXQ};
use crate::devices::virtio::VirtioDevice;

const BACKEND: u32 = 2;

impl Net {
    fn backend_events(&self) -> Events {
        Events::with_data_raw(self.backend_fd(), BACKEND, EventSet::IN)
    }

    /// Registers or unregisters the backend to match what the device can
    /// take.
    fn sync_backend_polling(&mut self, ops: &mut EventOps) {
        let wanted = self.is_active() && !self.rx_waiting;
        if wanted == self.backend_polled {
            return;
        }
        let result = if wanted { ops.add(self.backend_events()) } else { ops.remove(self.backend_events()) };
        match result {
            Ok(()) => self.backend_polled = wanted,
            Err(e) => tracing::error!(error = ?e, wanted, "net: cannot change tap polling"),
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.queue_events().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data_raw(evt.as_raw_fd(), index as u32, EventSet::IN)) {
                tracing::error!(error = ?e, index, "net: cannot register queue event");
            }
        }
        self.sync_backend_polling(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let source = events.data();
        if let Some(evt) = self.queue_events().get(source as usize) {
            // Consume the kick; the queues are read below regardless.
            let _ = evt.read();
        }
        match source as usize {
            RXQ => {
                self.rx_waiting = false;
                self.process_rx();
            }
            TXQ => self.process_tx(),
            _ if source == BACKEND => self.process_rx(),
            _ => tracing::warn!(source, "net: event from an unknown source"),
        }
        self.sync_backend_polling(ops);
    }
}
