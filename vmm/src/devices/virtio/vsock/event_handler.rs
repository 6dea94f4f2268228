//! Wires the vsock device into the VMM thread's event-manager loop: the
//! three queue eventfds (guest kicks), the muxer's epoll fd and the device's
//! timer (held-back TX buffers, the wait for the guest to take a transport
//! reset).

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Vsock, EVQ, RXQ, TXQ};
use super::metrics::VsockMetrics as M;
use crate::devices::virtio::Counters;
use crate::devices::virtio::VirtioDevice;

const MUXER: u32 = 3;
const TIMER: u32 = 4;

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let mut register = |fd: i32, data: u32| {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                tracing::error!(error = ?e, data, "vsock: cannot register event source");
            }
        };
        for (index, evt) in self.queue_events().iter().enumerate() {
            use std::os::fd::AsRawFd;
            register(evt.as_raw_fd(), index as u32);
        }
        register(self.muxer.epoll_fd(), MUXER);
        {
            use std::os::fd::AsRawFd;
            register(self.timer.as_raw_fd(), TIMER);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let source = events.data();
        if let Some(evt) = self.queue_events().get(source as usize) {
            // Consume the kicks (the count since the last read); the queues
            // are read below regardless.
            let kicks = evt.read().unwrap_or(0);
            if source as usize == TXQ {
                M::add(&self.metrics.tx_kicks, kicks);
            }
        }
        match source as usize {
            RXQ => self.process_rx(),
            TXQ => {
                self.process_tx();
                self.process_rx();
            }
            EVQ => {}
            _ if source == MUXER => self.process_backend(),
            _ if source == TIMER => self.timer_fired(),
            _ => tracing::warn!(source, "vsock: event from an unknown source"),
        }
    }
}
