//! The balloon device: inflate and deflate queues, and the free page
//! reporting queue. Every range a guest names is checked to be whole pages
//! of one guest RAM region before its host pages are given back.

use crate::devices::virtio::Counters;
use std::sync::Arc;

use virtio_queue::{QueueState, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::BalloonMetrics;
use super::TYPE_BALLOON;
use crate::devices::virtio::{
    next_chain, read_config_bytes, ActivateContext, ActivateError, IrqTrigger, VirtioDevice, INT_VRING,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Queue of pages the guest puts in the balloon.
pub const INFLATE: usize = 0;
/// Queue of pages the guest takes back.
pub const DEFLATE: usize = 1;
/// Queue of free page reports (with `REPORTING` and without `STATS_VQ` or
/// `FREE_PAGE_HINT`, the third queue: virtio 1.2, 5.5.2).
pub const REPORTING: usize = 2;
const QUEUE_SIZES: [u16; 3] = [64, 64, 32];
/// Feature bit: the guest may deflate when it runs out of memory.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Feature bit: free page reporting.
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
/// Balloon page frames are 4 KiB whatever the guest's page size.
const PFN_SHIFT: u64 = 12;
const PAGE: u64 = 1 << PFN_SHIFT;
/// Longest PFN array read from one descriptor (Linux sends at most 256).
const MAX_PFN_BYTES: u32 = 4096;

/// The balloon device.
pub struct Balloon {
    kicks: Vec<EventFd>,
    interrupt: Arc<IrqTrigger>,
    metrics: BalloonMetrics,
    /// `num_pages` (always 0: we never ask for memory) and `actual`.
    config: [u8; 8],
    active: Option<ActivateContext>,
    log_budget: crate::devices::virtio::GuestLogBudget,
}

impl std::fmt::Debug for Balloon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balloon").field("active", &self.active.is_some()).finish()
    }
}

/// Why a guest range was not given back.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// Not whole pages, empty, or not inside one RAM region.
    #[error("range {addr:#x}+{len:#x} is not whole pages of one guest RAM region")]
    Range {
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The host refused.
    #[error("giving back {addr:#x}+{len:#x}: {source}")]
    Host {
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// The system call's error.
        source: std::io::Error,
    },
}

/// Gives the host pages of guest range [addr, addr + len) back. They read
/// as zeros afterwards: a fresh anonymous mapping replaces the range, as a
/// template's private file mapping would otherwise show the template's
/// bytes again (and keep them in a later snapshot). Should the host refuse
/// a new mapping (too many mappings), the pages are dropped in place
/// (MADV_DONTNEED) instead.
pub fn discard(mem: &GuestMemoryMmap, addr: GuestAddress, len: u64) -> Result<(), DiscardError> {
    let bad = || DiscardError::Range { addr: addr.0, len };
    if len == 0 || !addr.0.is_multiple_of(PAGE) || !len.is_multiple_of(PAGE) {
        return Err(bad());
    }
    let region = mem.find_region(addr).ok_or_else(bad)?;
    let offset = addr.checked_offset_from(region.start_addr()).ok_or_else(bad)?;
    if offset.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(bad());
    }
    let host = mem.get_host_address(addr).map_err(|_| bad())?;
    let len_usize = usize::try_from(len).map_err(|_| bad())?;
    // SAFETY: [host, host + len) lies inside one region of `mem` (checked
    // above), a mapping the VMM owns for the VM's lifetime; MAP_FIXED
    // replaces those pages in place with anonymous zero pages, so the
    // region still covers them (KVM's MMU notifier drops its view of the
    // old pages). The guest reported the range free: no device holds it.
    let mapped = unsafe {
        libc::mmap(
            host.cast(),
            len_usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if mapped != libc::MAP_FAILED {
        crate::memory::name_guest_ram(host, len_usize);
        return Ok(());
    }
    // SAFETY: as above; MADV_DONTNEED only drops the range's pages.
    if unsafe { libc::madvise(host.cast(), len_usize, libc::MADV_DONTNEED) } != 0 {
        return Err(DiscardError::Host { addr: addr.0, len, source: std::io::Error::last_os_error() });
    }
    Ok(())
}

impl Balloon {
    /// A balloon raising `interrupt`.
    pub fn new(interrupt: Arc<IrqTrigger>) -> std::io::Result<Balloon> {
        let kicks = QUEUE_SIZES.iter().map(|_| EventFd::new(libc::EFD_NONBLOCK)).collect::<Result<_, _>>()?;
        Ok(Balloon {
            kicks,
            interrupt,
            metrics: BalloonMetrics::default(),
            config: [0; 8],
            active: None,
            log_budget: Default::default(),
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> &BalloonMetrics {
        &self.metrics
    }

    /// Handles what the guest put on queue `index`.
    pub fn process_queue(&mut self, index: usize) {
        let Balloon { active, metrics, interrupt, log_budget, .. } = self;
        let Some(active) = active.as_mut() else { return };
        let mem = &active.mem;
        let Some(queue) = active.queues.get_mut(index).filter(|q| q.ready()) else { return };
        let mut used = false;
        while let Some(chain) = next_chain(queue, mem, &metrics.bad_descriptors) {
            let head = chain.head_index();
            let mut failed = None;
            for desc in chain {
                let result = match index {
                    REPORTING => {
                        BalloonMetrics::inc(&metrics.reports);
                        discard(mem, desc.addr(), u64::from(desc.len())).map(|()| {
                            BalloonMetrics::add(&metrics.reported_bytes, u64::from(desc.len()));
                        })
                    }
                    _ if desc.is_write_only() || desc.len() > MAX_PFN_BYTES || desc.len() % 4 != 0 => {
                        Err(DiscardError::Range { addr: desc.addr().0, len: u64::from(desc.len()) })
                    }
                    _ => page_frames(mem, desc.addr(), desc.len()).and_then(|pfns| {
                        if index == INFLATE {
                            BalloonMetrics::add(&metrics.inflated_pages, pfns.len() as u64);
                            runs(&pfns)
                                .try_for_each(|(first, n)| discard(mem, GuestAddress(first << PFN_SHIFT), n * PAGE))
                        } else {
                            // The pages come back on the guest's next touch.
                            BalloonMetrics::add(&metrics.deflated_pages, pfns.len() as u64);
                            Ok(())
                        }
                    }),
                };
                if let Err(e) = result {
                    failed = Some(e);
                }
            }
            if let Some(e) = failed {
                BalloonMetrics::inc(&metrics.bad_descriptors);
                if log_budget.allow() {
                    tracing::warn!(queue = index, error = %e, "balloon: a range not given back");
                }
            }
            // Nothing is written into a balloon buffer.
            if let Err(e) = queue.add_used(mem, head, 0) {
                tracing::warn!(error = %e, "balloon: cannot return a chain");
                break;
            }
            used = true;
        }
        if used && queue.needs_notification(mem).unwrap_or(true) {
            BalloonMetrics::inc(&metrics.interrupts);
            if let Err(e) = interrupt.trigger(INT_VRING) {
                tracing::error!(error = %e, "balloon: cannot raise the interrupt");
            }
        }
    }
}

/// The little-endian 32-bit page frame numbers in a guest buffer.
fn page_frames(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> Result<Vec<u64>, DiscardError> {
    let mut bytes = vec![0u8; len as usize];
    mem.read_slice(&mut bytes, addr).map_err(|_| DiscardError::Range { addr: addr.0, len: u64::from(len) })?;
    Ok(bytes.chunks_exact(4).map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect())
}

/// Runs of consecutive frames: (first, count).
fn runs(pfns: &[u64]) -> impl Iterator<Item = (u64, u64)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let first = *pfns.get(i)?;
        let mut n = 1;
        while pfns.get(i + n as usize) == Some(&(first + n)) {
            n += 1;
        }
        i += n as usize;
        Some((first, n))
    })
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_REPORTING
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.kicks
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is the driver's to write.
        let end = offset.checked_add(data.len() as u64);
        if offset >= 4 && end.is_some_and(|end| end <= 8) {
            let at = offset as usize;
            self.config[at..at + data.len()].copy_from_slice(data);
        } else if self.log_budget.allow() {
            tracing::warn!(offset, len = data.len(), "balloon: guest wrote outside `actual`; ignored");
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.active = Some(ctx);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn quiesce(&mut self) -> Result<Vec<QueueState>, String> {
        // Chains are handled whole on the VMM thread: nothing in flight.
        let active = self.active.as_ref().ok_or("the balloon is not active")?;
        Ok(active.queues.iter().map(|q| q.state()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_frame_runs_are_coalesced() {
        assert_eq!(runs(&[5, 6, 7, 9, 3, 4]).collect::<Vec<_>>(), vec![(5, 3), (9, 1), (3, 2)]);
        assert_eq!(runs(&[]).count(), 0);
    }

    #[test]
    fn discarded_pages_read_as_zeros_even_over_a_file_mapping() {
        use std::io::Write;
        let mem = crate::memory::create(16 << 20).expect("memory");
        let mut file = tempfile::NamedTempFile::new().expect("tmp");
        file.write_all(&vec![0x77u8; 8 * PAGE as usize]).expect("write");
        crate::memory::map_file(&mem, file.as_file(), 0, 0x10_0000, 8 * PAGE).expect("map");
        mem.write_obj(0x11u8, GuestAddress(0x20_0000)).expect("write");
        discard(&mem, GuestAddress(0x10_0000 + PAGE), 2 * PAGE).expect("discard");
        discard(&mem, GuestAddress(0x20_0000), PAGE).expect("discard");
        let byte = |at: u64| mem.read_obj::<u8>(GuestAddress(at)).expect("read");
        assert_eq!((byte(0x10_0000), byte(0x10_0000 + PAGE), byte(0x10_0000 + 3 * PAGE - 1)), (0x77, 0, 0));
        assert_eq!((byte(0x10_0000 + 3 * PAGE), byte(0x20_0000)), (0x77, 0));
        // Still guest RAM: writable, and the file never changed.
        mem.write_obj(0x22u8, GuestAddress(0x10_0000 + PAGE)).expect("write");
        assert_eq!(std::fs::read(file.path()).expect("read")[PAGE as usize], 0x77);
    }

    #[test]
    fn guest_ranges_that_are_not_whole_pages_of_ram_are_refused() {
        let mem = crate::memory::create(16 << 20).expect("memory");
        for (addr, len) in
            [(0x1001, PAGE), (0x1000, 100), (0x1000, 0), ((16 << 20) - PAGE, 2 * PAGE), (1 << 40, PAGE), (!0xfff, PAGE)]
        {
            let err = discard(&mem, GuestAddress(addr), len).expect_err("refused");
            assert!(matches!(err, DiscardError::Range { .. }), "{addr:#x}+{len:#x}: {err}");
        }
    }
}
