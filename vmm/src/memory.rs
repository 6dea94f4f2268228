//! Guest RAM: anonymous private mappings (MAP_NORESERVE, so host memory is
//! only used for pages the guest touches), split around the 32-bit MMIO gap
//! and registered with KVM.
//!
//! Boot files (kernel segments, initrd) are *mapped* into guest RAM with
//! [`map_file`] rather than copied: a private file mapping over the range,
//! so nothing is read or faulted in before the guest touches it, and pages
//! the guest only reads stay shared in the page cache between VMs. This is
//! what keeps VMM start → first guest instruction within a few milliseconds.
//!
//! No other process maps guest RAM: virtiofsd serves shadow rings of its
//! own (`devices::virtio::fs::shadow`), so RAM stays private to the VMM
//! whatever devices the VM has, and a restored VM maps its snapshot's
//! memory file copy-on-write (`snapshot::memory`).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};

const PAGE_SIZE: u64 = 4096;

/// Errors setting up guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host could not map the memory.
    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    Allocate {
        /// Requested size.
        mib: u64,
        /// Why.
        reason: String,
    },
    /// KVM refused a memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION: {0}")]
    Register(kvm_ioctls::Error),
    /// A file range cannot be placed at a guest address.
    #[error("cannot map {len:#x} bytes of file offset {offset:#x} at guest address {addr:#x}: {reason}")]
    Map {
        /// File offset.
        offset: u64,
        /// Guest physical address.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// Why.
        reason: String,
    },
}

/// The (start, size) ranges of guest RAM for `size` bytes.
pub fn ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > MMIO_GAP_START {
        ranges.push((GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize));
    }
    ranges
}

/// What guest RAM is called in the VMM's /proc/PID/smaps
/// (`[anon:kata-like-guest-ram]`), so host memory can be accounted to it
/// (bench_cri, docs/benchmarks.md).
const RAM_NAME: &std::ffi::CStr = c"kata-like-guest-ram";

/// Maps `size` bytes of guest RAM.
pub fn create(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let mem = GuestMemoryMmap::from_ranges(&ranges(size))
        .map_err(|e| MemoryError::Allocate { mib: size >> 20, reason: e.to_string() })?;
    for region in mem.iter() {
        if let Ok(host) = region.get_host_address(vm_memory::MemoryRegionAddress(0)) {
            name_guest_ram(host, region.len() as usize);
        }
    }
    Ok(mem)
}

/// Labels the anonymous mapping [host, host + len) as guest RAM in smaps.
pub fn name_guest_ram(host: *mut u8, len: usize) {
    // SAFETY: PR_SET_VMA_ANON_NAME only labels the caller's own mapping of
    // `len` bytes at `host` (the kernel checks it is mapped); the name is
    // copied by the kernel. Kernels without CONFIG_ANON_VMA_NAME refuse it:
    // the label is only for accounting, so that is ignored.
    unsafe {
        libc::prctl(
            libc::PR_SET_VMA,
            libc::PR_SET_VMA_ANON_NAME as libc::c_ulong,
            host as libc::c_ulong,
            len as libc::c_ulong,
            RAM_NAME.as_ptr(),
        );
    }
}

/// Registers every region with KVM, one slot each.
pub fn register(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| MemoryError::Allocate { mib: region.len() >> 20, reason: e.to_string() })?;
        let slot = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned by
        // `mem`, which the VMM keeps for as long as the VM exists.
        unsafe { vm.set_user_memory_region(slot) }.map_err(MemoryError::Register)?;
        // For RSS accounting from outside (docs/benchmarks.md): which part of
        // the VMM's address space is guest RAM.
        tracing::info!(
            host_start = format_args!("{:#x}", host as u64),
            host_end = format_args!("{:#x}", host as u64 + region.len()),
            "guest RAM"
        );
    }
    Ok(())
}

/// Maps `len` bytes of `file` at `offset` into guest RAM at `addr`, private
/// and copy-on-write. `offset` and `addr` must be congruent modulo the page
/// size. The rest of the last page (file bytes past `len`) is zeroed, so the
/// guest sees exactly `len` bytes of the file.
pub fn map_file(
    mem: &GuestMemoryMmap,
    file: &std::fs::File,
    offset: u64,
    addr: u64,
    len: u64,
) -> Result<(), MemoryError> {
    use std::os::fd::AsRawFd;
    let fail = |reason: String| MemoryError::Map { offset, addr, len, reason };
    if len == 0 {
        return Ok(());
    }
    if offset % PAGE_SIZE != addr % PAGE_SIZE {
        return Err(fail("file offset and guest address are not page-congruent".into()));
    }
    let head = addr % PAGE_SIZE;
    let start = addr - head;
    let end = addr.checked_add(len).ok_or_else(|| fail("range overflows".into()))?;
    // Pages wholly past the end of the file would SIGBUS on access.
    let file_len = file.metadata().map_err(|e| fail(e.to_string()))?.len();
    if offset.checked_add(len).is_none_or(|file_end| file_end > file_len) {
        return Err(fail(format!("the file has only {file_len} bytes")));
    }
    let map_len = (end - start).next_multiple_of(PAGE_SIZE);
    // The whole range must be guest RAM of a single region.
    let region = mem.find_region(GuestAddress(start)).ok_or_else(|| fail("not guest RAM".into()))?;
    let region_end = region.start_addr().raw_value() + region.len();
    if start + map_len > region_end {
        return Err(fail("runs past the end of guest RAM".into()));
    }
    let host = mem.get_host_address(GuestAddress(start)).map_err(|e| fail(e.to_string()))?;
    let file_offset = libc::off_t::try_from(offset - head).map_err(|_| fail("offset too large".into()))?;
    // SAFETY: [host, host + map_len) lies inside a mapping owned by `mem`
    // (checked above), which stays mapped for the VM's lifetime; MAP_FIXED
    // replaces those pages in place with a private view of the file, so
    // `mem`'s region still covers them and unmaps them on drop.
    let mapped = unsafe {
        libc::mmap(
            host.cast(),
            map_len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            file_offset,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(fail(std::io::Error::last_os_error().to_string()));
    }
    // Zero what follows `len` in its page: later file bytes must not leak
    // into the guest (the start of a BSS, or the next segment's data).
    let tail = (start + map_len) - end;
    if tail > 0 && tail < PAGE_SIZE {
        let zeros = vec![0u8; tail as usize];
        vm_memory::Bytes::write_slice(mem, &zeros, GuestAddress(end)).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_files_appear_in_guest_memory_and_writes_stay_private() {
        use std::io::Write;
        use vm_memory::Bytes;
        let mem = create(16 << 20).expect("memory");
        let mut file = tempfile::NamedTempFile::new().expect("tmp");
        let data: Vec<u8> = (0..3 * PAGE_SIZE as usize + 100).map(|i| (i % 251) as u8 + 1).collect();
        file.write_all(&data).expect("write");
        // Map 2 pages + 10 bytes starting 16 bytes into the second page.
        let (offset, addr, len) = (PAGE_SIZE + 16, 0x20_0000 + 16, 2 * PAGE_SIZE + 10);
        map_file(&mem, file.as_file(), offset, addr, len).expect("map");
        let mut got = vec![0u8; len as usize];
        mem.read_slice(&mut got, GuestAddress(addr)).expect("read");
        assert_eq!(got, &data[offset as usize..(offset + len) as usize]);
        let after: u8 = mem.read_obj(GuestAddress(addr + len)).expect("read");
        assert_eq!(after, 0, "file bytes past len are zeroed");
        mem.write_obj(0xaau8, GuestAddress(addr)).expect("guest write");
        let on_disk = std::fs::read(file.path()).expect("read back");
        assert_eq!(on_disk[offset as usize], data[offset as usize], "the file is untouched");
    }

    #[test]
    fn bad_placements_are_refused() {
        let mem = create(16 << 20).expect("memory");
        let file = tempfile::NamedTempFile::new().expect("tmp");
        file.as_file().set_len(3 * PAGE_SIZE).expect("size");
        assert!(map_file(&mem, file.as_file(), 1, 0x10_0000, 10).unwrap_err().to_string().contains("congruent"));
        assert!(map_file(&mem, file.as_file(), 0, (16 << 20) - PAGE_SIZE, 2 * PAGE_SIZE)
            .unwrap_err()
            .to_string()
            .contains("end of guest RAM"));
        assert!(map_file(&mem, file.as_file(), 0, 0x4000_0000, PAGE_SIZE)
            .unwrap_err()
            .to_string()
            .contains("not guest RAM"));
        assert!(map_file(&mem, file.as_file(), PAGE_SIZE, 0x10_0000, 3 * PAGE_SIZE)
            .unwrap_err()
            .to_string()
            .contains("only"));
    }

    #[test]
    fn ranges_split_around_the_mmio_gap() {
        assert_eq!(ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let big = ranges(4 << 30);
        assert_eq!(big[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(big[1], (GuestAddress(MMIO_GAP_END), (1usize << 30)));
    }
}
