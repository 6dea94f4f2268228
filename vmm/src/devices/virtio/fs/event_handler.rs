//! Wires a virtio-fs device into the VMM thread's event loop: virtiofsd's
//! per-queue call eventfds become the device's virtio-mmio interrupt.

use crate::devices::virtio::Counters;
use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Fs;
use super::metrics::FsMetrics;
use crate::devices::virtio::INT_VRING;

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.call_events().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, index as u32, EventSet::IN)) {
                tracing::error!(error = ?e, index, "virtio-fs: cannot register a call eventfd");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        let Some(evt) = self.call_events().get(index) else {
            tracing::warn!(fd = events.fd(), "virtio-fs: event from an unknown source");
            return;
        };
        // Consume the notification, then interrupt the guest once for it.
        let _ = evt.read();
        FsMetrics::inc(&self.metrics().interrupts);
        if let Err(e) = self.interrupt().trigger(INT_VRING) {
            tracing::error!(error = %e, fd = evt.as_raw_fd(), "virtio-fs: cannot raise the interrupt");
        }
    }
}
