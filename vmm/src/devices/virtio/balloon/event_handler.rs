//! Wires the balloon into the VMM thread's event loop: its queue kicks.

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Balloon;
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        let fds: Vec<_> = self.queue_events().iter().map(|e| e.as_raw_fd()).collect();
        for (index, fd) in fds.into_iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data_raw(fd, index as u32, EventSet::IN)) {
                tracing::error!(error = ?e, index, "balloon: cannot register a queue eventfd");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        let Some(evt) = self.queue_events().get(index) else {
            tracing::warn!(fd = events.fd(), "balloon: event from an unknown source");
            return;
        };
        let _ = evt.read();
        self.process_queue(index);
    }
}
