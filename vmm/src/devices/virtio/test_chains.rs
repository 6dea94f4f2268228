//! Descriptor chains for device tests against virtio-queue's mock queues.

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;

/// One chain of `(addr, len)` descriptors with `flags`, stored from table
/// index `first` on (each links to the next).
pub fn chain(parts: &[(u64, u32)], flags: u16, first: u16) -> Vec<RawDescriptor> {
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, &(addr, len))| {
            let next = if i < last { VRING_DESC_F_NEXT as u16 } else { 0 };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags | next, first + i as u16 + 1))
        })
        .collect()
}

/// The used ring's `(id, len)` elements so far.
pub fn used(q: &MockSplitQueue<'_, GuestMemoryMmap>) -> Vec<(u32, u32)> {
    let n = q.used().idx().load();
    (0..n)
        .map(|i| {
            let elem = q.used().ring().ref_at(usize::from(i)).expect("used elem").load();
            (elem.id(), elem.len())
        })
        .collect()
}
