//! Wires a virtio-fs device into the VMM thread's event loop: the guest's
//! kicks (ioeventfds) forward its requests, virtiofsd's per-ring call
//! eventfds pass its replies back.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Fs, NUM_QUEUES};

/// Event data of virtiofsd's call eventfd of ring `q`: `CALL + q`.
const CALL: u32 = 0x100;

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        let sources = self.kicks.iter().enumerate().map(|(q, evt)| (evt.as_raw_fd(), q as u32));
        let calls = self.calls.iter().enumerate().map(|(q, evt)| (evt.as_raw_fd(), CALL + q as u32));
        for (fd, data) in sources.chain(calls).collect::<Vec<_>>() {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, EventSet::IN)) {
                tracing::error!(error = ?e, data, "virtio-fs: cannot register an event source");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let data = events.data();
        let (queue, is_call) = if data >= CALL { ((data - CALL) as usize, true) } else { (data as usize, false) };
        if queue >= NUM_QUEUES {
            tracing::warn!(fd = events.fd(), "virtio-fs: event from an unknown source");
            return;
        }
        // Consume the notification; the rings are read below regardless.
        if is_call {
            let _ = self.calls[queue].read();
            self.process_replies(queue);
        } else {
            let _ = self.kicks[queue].read();
            self.process_requests(queue);
        }
    }
}
