//! The rings virtiofsd serves: one split virtqueue per device queue, in a
//! small memfd shared with virtiofsd, and an arena the FUSE messages are
//! copied through (a "shadow virtqueue", as QEMU's vhost-vdpa has).
//!
//! Why: vhost-user lets the backend map the rings and buffers where the
//! driver put them, so guest RAM had to be a memfd shared with virtiofsd.
//! A VM restored from a template could then not map the template's memory
//! file MAP_PRIVATE (virtiofsd would see the file, not the VM's copies of
//! the pages it wrote), so every pod copied the whole template into its own
//! memfd. Here the VMM is the driver of these rings: it copies each request
//! the guest makes available into the arena, publishes it here, and copies
//! virtiofsd's reply back into the guest's buffers. Guest RAM is private to
//! the VMM and virtiofsd sees only this file (16 KiB of rings plus the
//! arena pages in use). The cost is two host memcpys per request, measured
//! in docs/benchmarks.md ("virtio-fs through shadow rings").
//!
//! Written here rather than taken from a crate: `virtio-queue` implements a
//! ring's device side only (its driver side is a test mock), and the driver
//! side needed is small (descriptors, the avail ring, the used ring).
//!
//! Layout of the file (addresses are "shadow" guest-physical addresses,
//! the region starts at 0): queue `q`'s descriptor table at page `2q`, its
//! avail and used rings at page `2q + 1`, then the arena.

use std::collections::BTreeMap;
use std::sync::atomic::{fence, Ordering};

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Entries of each shadow ring (two per request: what virtiofsd reads,
/// what it writes).
pub const RING_SIZE: u16 = 256;
/// Bytes the FUSE messages in flight may take, all queues together. The
/// largest message Linux sends is a 1 MiB write or read plus headers.
pub const ARENA_SIZE: u64 = 8 << 20;
const PAGE: u64 = 4096;
/// Arena allocations are rounded up to this.
const ALIGN: u64 = 64;
/// Arena bytes kept when it goes idle; pages above are given back.
const KEEP: u64 = 256 << 10;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// One request in the arena: `readable` bytes virtiofsd reads, followed by
/// `writable` bytes it may write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The shadow descriptor chain's head (the used ring names it).
    pub head: u16,
    /// Shadow address of the readable part; the writable part follows.
    pub addr: GuestAddress,
    /// Bytes of the request.
    pub readable: u32,
    /// Bytes of room for the reply.
    pub writable: u32,
    second: Option<u16>,
}

impl Slot {
    /// Shadow address of the writable part.
    pub fn reply_addr(&self) -> GuestAddress {
        GuestAddress(self.addr.0 + u64::from(self.readable))
    }

    fn arena_len(&self) -> u64 {
        arena_len(u64::from(self.readable) + u64::from(self.writable))
    }
}

/// Arena bytes a request of `total` bytes takes (allocated and released
/// alike: at least one aligned unit).
fn arena_len(total: u64) -> u64 {
    total.max(1).next_multiple_of(ALIGN)
}

/// The driver's side of one shadow ring.
#[derive(Debug)]
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    free: Vec<u16>,
    next_avail: u16,
    next_used: u16,
}

impl Ring {
    fn new(index: usize) -> Ring {
        let desc = 2 * index as u64 * PAGE;
        let avail = desc + PAGE;
        // used: 4-byte aligned after avail's flags, idx, ring and used_event.
        let used = (avail + 6 + 2 * u64::from(RING_SIZE)).next_multiple_of(4);
        Ring { desc, avail, used, free: (0..RING_SIZE).rev().collect(), next_avail: 0, next_used: 0 }
    }
}

/// First-fit allocator over the arena, lowest offsets first so a quiet
/// device keeps touching the same few pages.
#[derive(Debug)]
struct Arena {
    start: u64,
    /// Free extents: offset → length, non-adjacent.
    free: BTreeMap<u64, u64>,
}

impl Arena {
    fn new(start: u64) -> Arena {
        Arena { start, free: BTreeMap::from([(start, ARENA_SIZE)]) }
    }

    fn alloc(&mut self, len: u64) -> Option<u64> {
        let (&at, &have) = self.free.iter().find(|(_, &have)| have >= len)?;
        self.free.remove(&at);
        if have > len {
            self.free.insert(at + len, have - len);
        }
        Some(at)
    }

    fn release(&mut self, at: u64, len: u64) {
        let (mut start, mut end) = (at, at + len);
        if let Some((&before, &before_len)) = self.free.range(..at).next_back() {
            if before + before_len == at {
                self.free.remove(&before);
                start = before;
            }
        }
        if let Some(after_len) = self.free.remove(&end) {
            end += after_len;
        }
        self.free.insert(start, end - start);
    }

    fn is_empty(&self) -> bool {
        self.free.get(&self.start) == Some(&ARENA_SIZE)
    }
}

/// Why a request cannot go to virtiofsd now or ever.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotError {
    /// Larger than the arena: it never fits.
    TooLarge(u64),
    /// No room until requests in flight complete.
    Full,
}

/// The shadow rings and arena of one virtio-fs device.
#[derive(Debug)]
pub struct ShadowRings {
    mem: GuestMemoryMmap,
    rings: Vec<Ring>,
    arena: Arena,
    /// End of the highest arena bytes used since the last trim.
    high_water: u64,
}

impl ShadowRings {
    /// Rings for `queues` queues in a fresh memfd.
    pub fn new(queues: usize) -> std::io::Result<ShadowRings> {
        let memfd = nix::sys::memfd::memfd_create(c"kata-like-fs-rings", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        let file = std::fs::File::from(memfd);
        let arena_start = 2 * queues as u64 * PAGE;
        let size = arena_start + ARENA_SIZE;
        file.set_len(size)?;
        let mem =
            GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), size as usize, Some(FileOffset::new(file, 0)))])
                .map_err(std::io::Error::other)?;
        Ok(ShadowRings {
            mem,
            rings: (0..queues).map(Ring::new).collect(),
            arena: Arena::new(arena_start),
            high_water: 0,
        })
    }

    /// The memory virtiofsd maps (one region).
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Shadow addresses of queue `q`'s descriptor table, avail and used rings.
    pub fn ring_addrs(&self, q: usize) -> (u64, u64, u64) {
        let ring = &self.rings[q];
        (ring.desc, ring.avail, ring.used)
    }

    /// The avail index virtiofsd resumes queue `q` at.
    pub fn next_avail(&self, q: usize) -> u16 {
        self.rings[q].next_avail
    }

    /// Requests published on any queue and not yet collected.
    pub fn in_flight(&self) -> usize {
        self.rings.iter().map(|r| usize::from(RING_SIZE) - r.free.len()).sum::<usize>()
    }

    /// Back to empty rings (device reset; virtiofsd's rings are stopped).
    pub fn reset(&mut self) -> std::io::Result<()> {
        let queues = self.rings.len();
        let zeros = vec![0u8; (2 * queues as u64 * PAGE) as usize];
        self.mem.write_slice(&zeros, GuestAddress(0)).map_err(std::io::Error::other)?;
        self.rings = (0..queues).map(Ring::new).collect();
        self.arena = Arena::new(self.arena.start);
        Ok(())
    }

    /// Room for a request of `readable` bytes with `writable` bytes of
    /// reply on queue `q`. The caller copies the request to `slot.addr`,
    /// then [`ShadowRings::publish`]es it.
    pub fn start(&mut self, q: usize, readable: u32, writable: u32) -> Result<Slot, SlotError> {
        let total = u64::from(readable) + u64::from(writable);
        if total > ARENA_SIZE {
            return Err(SlotError::TooLarge(total));
        }
        let needed = if readable > 0 && writable > 0 { 2 } else { 1 };
        let ring = &mut self.rings[q];
        if ring.free.len() < needed {
            return Err(SlotError::Full);
        }
        let at = self.arena.alloc(arena_len(total)).ok_or(SlotError::Full)?;
        let head = ring.free.pop().ok_or(SlotError::Full)?;
        let second = if needed == 2 { ring.free.pop() } else { None };
        self.high_water = self.high_water.max(at + total);
        Ok(Slot { head, addr: GuestAddress(at), readable, writable, second })
    }

    /// Gives back a slot that was not published.
    pub fn abandon(&mut self, q: usize, slot: Slot) {
        self.finish(q, slot);
    }

    /// Writes the slot's descriptors and makes it available to virtiofsd.
    pub fn publish(&mut self, q: usize, slot: &Slot) -> Result<(), vm_memory::GuestMemoryError> {
        let ring = &mut self.rings[q];
        let desc = |index: u16| GuestAddress(ring.desc + 16 * u64::from(index));
        let write_desc = |index: u16, addr: u64, len: u32, flags: u16, next: u16| {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.to_le_bytes());
            self.mem.write_slice(&raw, desc(index))
        };
        match (slot.readable, slot.writable, slot.second) {
            (_, _, Some(second)) => {
                write_desc(slot.head, slot.addr.0, slot.readable, VRING_DESC_F_NEXT, second)?;
                write_desc(second, slot.reply_addr().0, slot.writable, VRING_DESC_F_WRITE, 0)?;
            }
            (0, writable, None) => write_desc(slot.head, slot.addr.0, writable, VRING_DESC_F_WRITE, 0)?,
            (readable, _, None) => write_desc(slot.head, slot.addr.0, readable, 0, 0)?,
        }
        let entry = GuestAddress(ring.avail + 4 + 2 * u64::from(ring.next_avail % RING_SIZE));
        self.mem.write_obj(slot.head.to_le(), entry)?;
        ring.next_avail = ring.next_avail.wrapping_add(1);
        // The descriptors and the entry before the index that shows them.
        fence(Ordering::Release);
        self.mem.store(ring.next_avail.to_le(), GuestAddress(ring.avail + 2), Ordering::Release)
    }

    /// The next (head, bytes written) virtiofsd put in queue `q`'s used
    /// ring, if any.
    pub fn next_used(&mut self, q: usize) -> Result<Option<(u16, u32)>, vm_memory::GuestMemoryError> {
        let ring = &mut self.rings[q];
        let idx = u16::from_le(self.mem.load(GuestAddress(ring.used + 2), Ordering::Acquire)?);
        if idx == ring.next_used {
            return Ok(None);
        }
        let elem = GuestAddress(ring.used + 4 + 8 * u64::from(ring.next_used % RING_SIZE));
        let id = u32::from_le(self.mem.read_obj(elem)?);
        let len = u32::from_le(self.mem.read_obj(GuestAddress(elem.0 + 4))?);
        ring.next_used = ring.next_used.wrapping_add(1);
        // An id that is no descriptor index is reported as such by the
        // caller's lookup; truncating could alias a real one.
        Ok(Some((u16::try_from(id).unwrap_or(u16::MAX), len)))
    }

    /// Frees a completed request's descriptors and arena room.
    pub fn finish(&mut self, q: usize, slot: Slot) {
        let ring = &mut self.rings[q];
        ring.free.push(slot.head);
        if let Some(second) = slot.second {
            ring.free.push(second);
        }
        self.arena.release(slot.addr.0, slot.arena_len());
    }

    /// Whether no request holds arena room.
    pub fn arena_idle(&self) -> bool {
        self.arena.is_empty()
    }

    /// With nothing in flight, gives the arena's pages above the first
    /// [`KEEP`] bytes back to the host if a burst of large requests touched
    /// them (the file is shared, so they would stay resident otherwise).
    pub fn trim(&mut self) {
        let from = self.arena.start + KEEP;
        if self.high_water <= from || !self.arena.is_empty() {
            return;
        }
        let len = (self.high_water - from).next_multiple_of(PAGE);
        self.high_water = 0;
        let Ok(host) = self.mem.get_host_address(GuestAddress(from)) else { return };
        // SAFETY: [host, host + len) lies in our own shared mapping of the
        // memfd (the arena ends at the mapping's end and high_water never
        // passes it); no request holds any of it, and virtiofsd only reads
        // it for requests in flight. MADV_REMOVE frees the file's pages; a
        // later access reads zeros.
        if unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_REMOVE) } != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "virtio-fs: cannot trim the shadow arena");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::{Queue, QueueT};

    /// virtio-queue's device side on the shadow memory, as virtiofsd has it.
    fn backend(rings: &ShadowRings, q: usize) -> Queue {
        let (desc, avail, used) = rings.ring_addrs(q);
        let mut queue = Queue::new(RING_SIZE).expect("queue");
        queue.set_size(RING_SIZE);
        queue.try_set_desc_table_address(GuestAddress(desc)).expect("desc");
        queue.try_set_avail_ring_address(GuestAddress(avail)).expect("avail");
        queue.try_set_used_ring_address(GuestAddress(used)).expect("used");
        queue.set_ready(true);
        assert!(queue.is_valid(rings.mem()));
        queue
    }

    #[test]
    fn a_request_goes_round_the_ring_as_a_device_sees_it() {
        let mut rings = ShadowRings::new(2).expect("rings");
        let mut device = backend(&rings, 1);
        for round in 0..(3 * RING_SIZE as u32) {
            let slot = rings.start(1, 40, 100).expect("room");
            rings.mem().write_slice(&[round as u8; 40], slot.addr).expect("request");
            rings.publish(1, &slot).expect("publish");
            let chain = device.pop_descriptor_chain(rings.mem()).expect("a chain");
            let head = chain.head_index();
            let parts: Vec<_> = chain.map(|d| (d.addr(), d.len(), d.is_write_only())).collect();
            assert_eq!(parts, vec![(slot.addr, 40, false), (slot.reply_addr(), 100, true)]);
            let mut request = [0u8; 40];
            rings.mem().read_slice(&mut request, parts[0].0).expect("read");
            assert_eq!(request, [round as u8; 40]);
            rings.mem().write_slice(b"reply", parts[1].0).expect("reply");
            device.add_used(rings.mem(), head, 5).expect("used");
            assert_eq!(rings.next_used(1).expect("used ring"), Some((slot.head, 5)));
            assert_eq!(rings.next_used(1).expect("used ring"), None);
            rings.finish(1, slot);
        }
        assert_eq!(rings.in_flight(), 0);
        assert!(rings.arena_idle());
        // Queue 0 never saw any of it.
        assert!(backend(&rings, 0).pop_descriptor_chain(rings.mem()).is_none());
    }

    #[test]
    fn room_runs_out_and_comes_back() {
        let mut rings = ShadowRings::new(1).expect("rings");
        let big = (ARENA_SIZE / 4) as u32;
        assert_eq!(rings.start(0, 16, (ARENA_SIZE) as u32), Err(SlotError::TooLarge(ARENA_SIZE + 16)));
        let slots: Vec<_> = (0..3).map(|_| rings.start(0, 16, big).expect("room")).collect();
        assert_eq!(rings.start(0, 16, big), Err(SlotError::Full));
        rings.finish(0, slots[1]);
        let again = rings.start(0, 16, big).expect("the freed room");
        assert_eq!(again.addr, slots[1].addr);
        for slot in [slots[0], again, slots[2]] {
            rings.finish(0, slot);
        }
        assert!(rings.arena_idle());
        // Descriptors run out before the arena with small requests.
        let small: Vec<_> = (0..RING_SIZE / 2).map(|_| rings.start(0, 16, 16).expect("room")).collect();
        assert_eq!(rings.start(0, 16, 16), Err(SlotError::Full));
        assert_eq!(rings.start(0, 16, 0).map(|_| ()), Err(SlotError::Full));
        small.into_iter().for_each(|slot| rings.finish(0, slot));
        assert!(rings.arena_idle());
    }

    #[test]
    fn one_way_requests_take_one_descriptor() {
        let mut rings = ShadowRings::new(1).expect("rings");
        let mut device = backend(&rings, 0);
        let slot = rings.start(0, 24, 0).expect("room");
        rings.publish(0, &slot).expect("publish");
        let chain = device.pop_descriptor_chain(rings.mem()).expect("chain");
        assert_eq!(chain.map(|d| (d.len(), d.is_write_only())).collect::<Vec<_>>(), vec![(24, false)]);
        rings.reset().expect("reset");
        assert_eq!((rings.next_avail(0), rings.in_flight()), (0, 0));
    }
}
