//! Moving FUSE messages between the guest's rings and the shadow rings
//! virtiofsd serves ([`super::shadow`]): a request the guest makes
//! available is copied into the arena and published to virtiofsd; the
//! reply virtiofsd writes there is copied into the guest's buffers and the
//! guest's chain is returned with its length.
//!
//! Everything from the guest is untrusted: a chain whose readable and
//! writable parts are out of order, that points outside guest RAM or that
//! is larger than the arena is returned unused (length 0) and counted in
//! `bad_descriptors`, like the other devices do. What virtiofsd answers is
//! checked too: a used entry naming no request in flight is counted in
//! `backend_errors` and dropped, and a reply length is clipped to the room
//! the guest gave.

use crate::devices::virtio::Counters;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::FsMetrics;
use super::shadow::{ShadowRings, Slot, SlotError, RING_SIZE};
use crate::devices::virtio::{next_chain, ActivateContext, IrqTrigger, INT_VRING};

/// A guest request at virtiofsd.
#[derive(Debug)]
pub struct InFlight {
    guest_head: u16,
    /// The guest's writable buffers, as the chain named them.
    reply: Vec<(GuestAddress, u32)>,
    slot: Slot,
}

/// A guest chain taken apart.
struct Request {
    readable: Vec<(GuestAddress, u32)>,
    readable_len: u32,
    writable: Vec<(GuestAddress, u32)>,
    writable_len: u32,
}

/// The chain's buffers, or why it is malformed.
fn take_apart<M>(chain: DescriptorChain<M>) -> Result<Request, &'static str>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut request = Request { readable: Vec::new(), readable_len: 0, writable: Vec::new(), writable_len: 0 };
    for desc in chain {
        let (list, total) = if desc.is_write_only() {
            (&mut request.writable, &mut request.writable_len)
        } else if request.writable.is_empty() {
            (&mut request.readable, &mut request.readable_len)
        } else {
            return Err("a readable descriptor after a writable one");
        };
        *total = total.checked_add(desc.len()).ok_or("buffers longer than 4 GiB")?;
        list.push((desc.addr(), desc.len()));
    }
    if request.readable_len == 0 {
        return Err("no request (no readable bytes)");
    }
    Ok(request)
}

/// Bytes moved per copy step: the scratch buffer never grows past this,
/// whatever the requests' sizes (it lives as long as the VMM).
const COPY_CHUNK: usize = 64 << 10;

/// Copies `len` bytes from `from` in `src` to `to` in `dst`, through
/// `scratch` ([`COPY_CHUNK`] at a time).
fn copy_between(
    src: &GuestMemoryMmap,
    mut from: GuestAddress,
    dst: &GuestMemoryMmap,
    mut to: GuestAddress,
    len: usize,
    scratch: &mut Vec<u8>,
) -> Result<(), vm_memory::GuestMemoryError> {
    scratch.resize(COPY_CHUNK, 0);
    let mut left = len;
    while left > 0 {
        let n = left.min(COPY_CHUNK);
        src.read_slice(&mut scratch[..n], from)?;
        dst.write_slice(&scratch[..n], to)?;
        from = GuestAddress(from.0 + n as u64);
        to = GuestAddress(to.0 + n as u64);
        left -= n;
    }
    Ok(())
}

/// Copies the guest buffers `from` to the arena at `to`.
fn copy_in(
    guest: &GuestMemoryMmap,
    arena: &GuestMemoryMmap,
    from: &[(GuestAddress, u32)],
    mut to: GuestAddress,
    scratch: &mut Vec<u8>,
) -> Result<(), vm_memory::GuestMemoryError> {
    for &(addr, len) in from {
        copy_between(guest, addr, arena, to, len as usize, scratch)?;
        to = GuestAddress(to.0 + u64::from(len));
    }
    Ok(())
}

/// Copies `len` bytes from the arena at `from` into the guest buffers `to`,
/// in order; returns the bytes copied.
fn copy_out(
    arena: &GuestMemoryMmap,
    mut from: GuestAddress,
    guest: &GuestMemoryMmap,
    to: &[(GuestAddress, u32)],
    len: u32,
    scratch: &mut Vec<u8>,
) -> Result<u32, vm_memory::GuestMemoryError> {
    let mut left = len as usize;
    for &(addr, room) in to {
        if left == 0 {
            break;
        }
        let n = left.min(room as usize);
        copy_between(arena, from, guest, addr, n, scratch)?;
        from = GuestAddress(from.0 + n as u64);
        left -= n;
    }
    Ok(len - left as u32)
}

/// The shadow rings and the guest requests at virtiofsd.
#[derive(Debug)]
pub struct Relay {
    rings: ShadowRings,
    /// Requests at virtiofsd, by shadow ring and shadow head.
    in_flight: Vec<Vec<Option<InFlight>>>,
    /// Queues whose next request waits for room in the shadow rings.
    stalled: Vec<bool>,
    /// Buffer for copies between guest RAM and the arena.
    scratch: Vec<u8>,
}

/// Raises the guest's interrupt for used chains, if the driver wants one.
fn notify(queue: &mut virtio_queue::Queue, mem: &GuestMemoryMmap, metrics: &FsMetrics, interrupt: &IrqTrigger) {
    if queue.needs_notification(mem).unwrap_or(true) {
        FsMetrics::inc(&metrics.interrupts);
        if let Err(e) = interrupt.trigger(INT_VRING) {
            tracing::error!(error = %e, "virtio-fs: cannot raise the interrupt");
        }
    }
}

impl Relay {
    /// Shadow rings for `queues` queues, nothing in flight.
    pub fn new(queues: usize) -> std::io::Result<Relay> {
        Ok(Relay {
            rings: ShadowRings::new(queues)?,
            in_flight: (0..queues).map(|_| (0..RING_SIZE).map(|_| None).collect()).collect(),
            stalled: vec![false; queues],
            scratch: Vec::new(),
        })
    }

    /// The shadow rings virtiofsd serves.
    pub fn rings(&self) -> &ShadowRings {
        &self.rings
    }

    /// Requests at virtiofsd.
    pub fn in_flight(&self) -> usize {
        self.rings.in_flight()
    }

    /// Forgets every request and empties the rings (device reset;
    /// virtiofsd's rings are stopped).
    pub fn forget(&mut self) {
        self.in_flight.iter_mut().flatten().for_each(|entry| *entry = None);
        self.stalled.iter_mut().for_each(|s| *s = false);
        if let Err(e) = self.rings.reset() {
            tracing::warn!(error = %e, "virtio-fs: cannot clear the shadow rings");
        }
    }

    /// Forwards the requests the guest made available on `queue` to
    /// virtiofsd (kicked on `kick`), as far as the shadow rings have room.
    pub fn process_requests(
        &mut self,
        queue: usize,
        guest: &mut ActivateContext,
        metrics: &FsMetrics,
        kick: &EventFd,
        interrupt: &IrqTrigger,
    ) {
        let Relay { rings, in_flight, stalled, scratch } = self;
        let mem = &guest.mem;
        let Some(guest_queue) = guest.queues.get_mut(queue).filter(|q| q.ready()) else { return };
        let (mut published, mut refused) = (false, false);
        let mut refuse = |guest_queue: &mut virtio_queue::Queue, head: u16, why: &str| {
            tracing::debug!(queue, why, "virtio-fs: bad descriptor chain");
            FsMetrics::inc(&metrics.bad_descriptors);
            if let Err(e) = guest_queue.add_used(mem, head, 0) {
                tracing::warn!(error = %e, "virtio-fs: cannot return a chain");
            }
            refused = true;
        };
        stalled[queue] = false;
        while let Some(chain) = next_chain(guest_queue, mem, &metrics.bad_descriptors) {
            let head = chain.head_index();
            let request = match take_apart(chain) {
                Ok(request) => request,
                Err(why) => {
                    refuse(guest_queue, head, why);
                    continue;
                }
            };
            let slot = match rings.start(queue, request.readable_len, request.writable_len) {
                Ok(slot) => slot,
                Err(SlotError::Full) => {
                    // Taken again once virtiofsd answers something.
                    guest_queue.go_to_previous_position();
                    stalled[queue] = true;
                    FsMetrics::inc(&metrics.stalls);
                    break;
                }
                Err(SlotError::TooLarge(_)) => {
                    refuse(guest_queue, head, "larger than the shadow arena");
                    continue;
                }
            };
            if copy_in(mem, rings.mem(), &request.readable, slot.addr, scratch).is_err() {
                rings.abandon(queue, slot);
                refuse(guest_queue, head, "a buffer outside guest RAM");
                continue;
            }
            if let Err(e) = rings.publish(queue, &slot) {
                tracing::warn!(error = %e, "virtio-fs: cannot publish to the shadow ring");
                FsMetrics::inc(&metrics.backend_errors);
                rings.abandon(queue, slot);
                refuse(guest_queue, head, "shadow ring unusable");
                continue;
            }
            FsMetrics::inc(&metrics.requests);
            FsMetrics::add(&metrics.bytes_to_backend, u64::from(request.readable_len));
            in_flight[queue][usize::from(slot.head)] =
                Some(InFlight { guest_head: head, reply: request.writable, slot });
            published = true;
        }
        if published {
            if let Err(e) = kick.write(1) {
                tracing::warn!(error = %e, "virtio-fs: cannot notify virtiofsd");
            }
        }
        if refused {
            notify(guest_queue, mem, metrics, interrupt);
        }
    }

    /// Passes virtiofsd's replies on shadow ring `queue` back to the guest
    /// (if the device is still active); true if requests of that queue
    /// wait for the room this freed ([`Relay::process_requests`] them).
    pub fn process_replies(
        &mut self,
        queue: usize,
        mut guest: Option<&mut ActivateContext>,
        metrics: &FsMetrics,
        interrupt: &IrqTrigger,
    ) -> bool {
        let Relay { rings, in_flight, stalled, scratch } = self;
        let mut used = false;
        loop {
            let (head, len) = match rings.next_used(queue) {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "virtio-fs: cannot read the shadow used ring");
                    FsMetrics::inc(&metrics.backend_errors);
                    break;
                }
            };
            let Some(entry) = in_flight[queue].get_mut(usize::from(head)).and_then(Option::take) else {
                tracing::warn!(queue, head, "virtio-fs: virtiofsd returned a request it was not given");
                FsMetrics::inc(&metrics.backend_errors);
                continue;
            };
            let Some(guest) = guest.as_deref_mut() else {
                rings.finish(queue, entry.slot);
                continue;
            };
            let mem = &guest.mem;
            let len = len.min(entry.slot.writable);
            let copied = copy_out(rings.mem(), entry.slot.reply_addr(), mem, &entry.reply, len, scratch)
                .unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "virtio-fs: a reply buffer outside guest RAM");
                    FsMetrics::inc(&metrics.bad_descriptors);
                    0
                });
            FsMetrics::add(&metrics.bytes_from_backend, u64::from(copied));
            rings.finish(queue, entry.slot);
            if let Some(guest_queue) = guest.queues.get_mut(queue) {
                if let Err(e) = guest_queue.add_used(mem, entry.guest_head, copied) {
                    tracing::warn!(error = %e, "virtio-fs: cannot return a chain");
                }
                used = true;
            }
        }
        if let (true, Some(guest)) = (used, guest) {
            if let Some(guest_queue) = guest.queues.get_mut(queue) {
                notify(guest_queue, &guest.mem, metrics, interrupt);
            }
        }
        if rings.in_flight() == 0 {
            rings.trim();
        }
        stalled.get(queue).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_cross_chunks_and_buffers_in_order_with_bounded_scratch() {
        let guest = crate::memory::create(4 << 20).expect("guest");
        let arena = super::super::shadow::ShadowRings::new(1).expect("rings");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        guest.write_slice(&data[..100_000], GuestAddress(0x10_0000)).expect("write");
        guest.write_slice(&data[100_000..], GuestAddress(0x30_0000)).expect("write");
        let parts = [(GuestAddress(0x10_0000), 100_000), (GuestAddress(0x30_0000), 200_000)];
        let mut scratch = Vec::new();
        let at = GuestAddress(0x8000);
        copy_in(&guest, arena.mem(), &parts, at, &mut scratch).expect("copy in");
        assert_eq!(scratch.len(), COPY_CHUNK, "the scratch buffer stays one chunk");
        let mut back = vec![0u8; data.len()];
        arena.mem().read_slice(&mut back, at).expect("read");
        assert_eq!(back, data);
        // Out again into other buffers, clipped to their room.
        let rooms = [(GuestAddress(0x20_0000), 70_000), (GuestAddress(0x28_0000), 500_000)];
        assert_eq!(copy_out(arena.mem(), at, &guest, &rooms, 250_000, &mut scratch).expect("copy out"), 250_000);
        let mut first = vec![0u8; 70_000];
        guest.read_slice(&mut first, GuestAddress(0x20_0000)).expect("read");
        assert_eq!(first, data[..70_000]);
        let mut second = vec![0u8; 180_000];
        guest.read_slice(&mut second, GuestAddress(0x28_0000)).expect("read");
        assert_eq!(second, data[70_000..250_000]);
        // A buffer outside guest RAM is an error, not a panic.
        let outside = [(GuestAddress(8 << 20), 10)];
        assert!(copy_in(&guest, arena.mem(), &outside, at, &mut scratch).is_err());
    }
}
