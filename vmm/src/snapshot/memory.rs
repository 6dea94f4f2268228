//! Guest RAM in a snapshot: one file, the RAM regions back to back in
//! address order (the layout of [`crate::memory::ranges`]), sparse.
//!
//! Writing skips pages that are all zeros, leaving holes, so the file's
//! disk usage is the guest's working set, not its RAM size. Every page of
//! anonymous RAM is read (a never-touched page reads as the shared zero
//! page, allocating nothing); residency (mincore) is not a usable filter,
//! because boot files are private *file* mappings in guest RAM whose pages
//! the guest has not read yet are not resident either, yet hold the kernel
//! and initramfs.
//!
//! Restoring maps the file MAP_PRIVATE over guest RAM: no copy, every VM
//! restored from one template shares the file's pages in the host page
//! cache, and a guest write copies that one page into the VM's own memory
//! (the VMM's anonymous memory: nothing reaches the file or another VM).
//! Until 2026-12 a VM with virtio-fs copied the file into a memfd shared
//! with virtiofsd instead; virtiofsd now serves shadow rings and never
//! sees guest RAM (`devices::virtio::fs::shadow`).
//!
//! The checksum [`dump`] stored is recomputed from the file, 1 MiB per
//! read, the two halves of the data on two threads with their CRCs
//! combined, on a thread of its own ([`spawn_check`]) while the rest of the
//! VM is restored. The restore has the result before it hands the VM over
//! to run, so a damaged file is refused before any guest instruction runs
//! on it. (It used to be one 4 KiB `pread` per page in the restore's own
//! path: about 13 ms of a 23.5 ms restore here.)

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::SnapshotError;

const PAGE: usize = 4096;

/// What [`dump`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Guest RAM size in bytes (the file's length).
    pub ram_bytes: u64,
    /// Bytes of data written (the rest are holes).
    pub data_bytes: u64,
    /// CRC32 over each data page's file offset and contents, in file order.
    pub crc32: u32,
}

/// Adds one data page to a memory checksum.
fn hash_page(hasher: &mut crc32fast::Hasher, offset: u64, page: &[u8]) {
    hasher.update(&offset.to_le_bytes());
    hasher.update(page);
}

/// (guest address, length, offset in the memory file) of each RAM region.
fn layout(mem: &GuestMemoryMmap) -> Vec<(GuestAddress, usize, u64)> {
    let mut offset = 0u64;
    mem.iter()
        .map(|region| {
            let entry = (region.start_addr(), region.len() as usize, offset);
            offset += region.len();
            entry
        })
        .collect()
}

/// Writes guest RAM to `path` (created; replaced if it exists). The vCPUs
/// must be paused.
pub fn dump(mem: &GuestMemoryMmap, path: &Path) -> Result<DumpStats, SnapshotError> {
    let io = SnapshotError::io(path);
    let file = File::create(path).map_err(SnapshotError::io(path))?;
    let regions = layout(mem);
    let ram_bytes: u64 = regions.iter().map(|(_, len, _)| *len as u64).sum();
    file.set_len(ram_bytes).map_err(SnapshotError::io(path))?;
    let mut stats = DumpStats { ram_bytes, data_bytes: 0, crc32: 0 };
    let mut hasher = crc32fast::Hasher::new();
    let mut page = vec![0u8; PAGE];
    for (start, len, file_offset) in regions {
        // Every page is read: see the module documentation.
        let ranges = [(0u64, len as u64)];
        for (range_start, range_len) in ranges {
            let first = range_start - range_start % PAGE as u64;
            let mut at = first;
            while at < range_start + range_len && at < len as u64 {
                mem.read_slice(&mut page, start.unchecked_add(at))
                    .map_err(|e| SnapshotError::State(format!("reading guest RAM: {e}")))?;
                if page.iter().any(|&b| b != 0) {
                    file.write_all_at(&page, file_offset + at).map_err(SnapshotError::io(path))?;
                    hash_page(&mut hasher, file_offset + at, &page);
                    stats.data_bytes += PAGE as u64;
                }
                at += PAGE as u64;
            }
        }
    }
    file.sync_all().map_err(io)?;
    stats.crc32 = hasher.finalize();
    Ok(stats)
}

/// The data extents of `file` within [from, len): (offset, length) pairs.
fn data_extents(file: &File, from: u64, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let mut extents = Vec::new();
    let mut at = from;
    while at < len {
        // SAFETY: lseek on our open file; no memory is involved.
        let data = unsafe { libc::lseek(file.as_raw_fd(), at as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // no data after `at`
            }
            return Err(err);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (data, hole) = (data as u64, (hole as u64).min(len));
        if hole > data {
            extents.push((data, hole - data));
        }
        at = hole.max(data + 1);
    }
    Ok(extents)
}

/// Bytes read at a time when restoring or checking the memory file.
const CHUNK: usize = 1 << 20;

/// The page-aligned byte ranges of the memory file's data extents.
fn data_ranges(file: &File, path: &Path, size: u64) -> Result<Vec<(u64, u64)>, SnapshotError> {
    Ok(data_extents(file, 0, size)
        .map_err(SnapshotError::io(path))?
        .into_iter()
        .map(|(offset, len)| (offset - offset % PAGE as u64, (offset + len).next_multiple_of(PAGE as u64).min(size)))
        .collect())
}

/// Hashes the non-zero pages of `ranges` as [`dump`] does, reading
/// `CHUNK` bytes at a time.
fn hash_ranges(file: &File, path: &Path, ranges: &[(u64, u64)]) -> Result<crc32fast::Hasher, SnapshotError> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    for &(mut at, end) in ranges {
        while at < end {
            let n = ((end - at) as usize).min(CHUNK);
            file.read_exact_at(&mut buf[..n], at).map_err(SnapshotError::io(path))?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                if page.iter().any(|&b| b != 0) {
                    let offset = at + (i * PAGE) as u64;
                    hash_page(&mut hasher, offset, page);
                }
            }
            at += n as u64;
        }
    }
    Ok(hasher)
}

/// The checksum [`dump`] computes, recomputed from the memory file: every
/// non-zero page of its data
/// extents, in file order (a file system may report a few zero bytes
/// around the pages written as data; zero pages were never written). The
/// two halves of the data are done on two threads and their CRCs combined
/// (the CRC32 of a concatenation).
fn file_checksum(file: &File, path: &Path, size: u64) -> Result<u32, SnapshotError> {
    let ranges = data_ranges(file, path, size)?;
    let total: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    // Split at the page boundary nearest half the data.
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut seen = 0;
    for &(start, end) in &ranges {
        let half = (total / 2).saturating_sub(seen);
        let cut = (start + half.next_multiple_of(PAGE as u64)).clamp(start, end);
        if cut > start {
            first.push((start, cut));
        }
        if end > cut {
            second.push((cut, end));
        }
        seen += cut - start;
    }
    let (head, tail) = std::thread::scope(|scope| {
        let tail = std::thread::Builder::new()
            .name("snapshot-check2".into())
            .spawn_scoped(scope, || hash_ranges(file, path, &second));
        let head = hash_ranges(file, path, &first);
        let tail = match tail {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(SnapshotError::State("the snapshot checksum thread panicked".into()))),
            Err(_) => hash_ranges(file, path, &second),
        };
        (head, tail)
    });
    let mut hasher = head?;
    hasher.combine(&tail?);
    Ok(hasher.finalize())
}

/// Checks the memory file at `path` against `crc32` from the state file.
/// It reads the file, not guest RAM (which a running guest changes), so it
/// can run beside the rest of a restore ([`spawn_check`]).
pub fn check(path: &Path, crc32: u32) -> Result<(), SnapshotError> {
    let file = File::open(path).map_err(SnapshotError::io(path))?;
    let size = file.metadata().map_err(SnapshotError::io(path))?.len();
    compare(path, crc32, file_checksum(&file, path, size)?)
}

/// A checksum recomputed from the memory file against the state's.
fn compare(path: &Path, stored: u32, computed: u32) -> Result<(), SnapshotError> {
    if computed != stored {
        return Err(SnapshotError::Checksum { path: path.to_path_buf(), stored, computed });
    }
    Ok(())
}

/// A memory file check under way ([`spawn_check`]).
#[derive(Debug)]
pub enum PendingCheck {
    /// On its thread.
    Running(std::thread::JoinHandle<Result<(), SnapshotError>>),
    /// Done already (no thread could be started, so it ran in place).
    Done(Result<(), SnapshotError>),
}

impl PendingCheck {
    /// The check's outcome, once it is done.
    pub fn wait(self) -> Result<(), SnapshotError> {
        match self {
            PendingCheck::Running(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(SnapshotError::State("the snapshot checksum thread panicked".into()))),
            PendingCheck::Done(result) => result,
        }
    }
}

/// [`check`] on a thread of its own. The restore waits for it before any
/// vCPU runs, so no guest instruction ever executes on unchecked memory,
/// while the check overlaps with building the VM (KVM, devices, vCPU
/// state).
pub fn spawn_check(path: &Path, crc32: u32) -> PendingCheck {
    let owned = path.to_path_buf();
    match std::thread::Builder::new().name("snapshot-check".into()).spawn(move || check(&owned, crc32)) {
        Ok(thread) => PendingCheck::Running(thread),
        Err(_) => PendingCheck::Done(check(path, crc32)),
    }
}

/// Guest RAM of `size` bytes restored from the memory file at `path`,
/// mapped private (checked apart, [`spawn_check`]).
pub fn restore(path: &Path, size: u64) -> Result<GuestMemoryMmap, SnapshotError> {
    let file = File::open(path).map_err(SnapshotError::io(path))?;
    let file_len = file.metadata().map_err(SnapshotError::io(path))?.len();
    if file_len != size {
        return Err(SnapshotError::Invalid {
            path: path.to_path_buf(),
            why: format!("the memory file is {file_len} bytes; the state says guest RAM is {size}"),
        });
    }
    let bad = |why: String| SnapshotError::Invalid { path: path.to_path_buf(), why };
    let mem = crate::memory::create(size).map_err(|e| bad(e.to_string()))?;
    for &(start, len, offset) in &layout(&mem) {
        crate::memory::map_file(&mem, &file, offset, start.0, len as u64).map_err(|e| bad(e.to_string()))?;
    }
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(mem: &GuestMemoryMmap) {
        mem.write_obj(0x1122_3344u32, GuestAddress(0x1000)).expect("write");
        mem.write_slice(&[7u8; 3 * PAGE], GuestAddress(0x10_0000)).expect("write");
        // Touched but zero: resident, yet no data in the file.
        mem.write_slice(&[0u8; PAGE], GuestAddress(0x20_0000)).expect("write");
    }

    fn check_ram(mem: &GuestMemoryMmap) {
        assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).expect("read"), 0x1122_3344);
        let mut buf = vec![0u8; 3 * PAGE];
        mem.read_slice(&mut buf, GuestAddress(0x10_0000)).expect("read");
        assert!(buf.iter().all(|&b| b == 7));
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x50_0000)).expect("read"), 0);
    }

    #[test]
    fn dump_is_sparse_and_restores_share_the_file_copy_on_write() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("memory");
        let mem = crate::memory::create(16 << 20).expect("mem");
        fill(&mem);
        // A boot file mapped into RAM that the guest never read: its pages
        // are not resident, yet they are guest RAM content.
        let boot_file = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(boot_file.path(), vec![0x5au8; PAGE]).expect("write");
        crate::memory::map_file(&mem, boot_file.as_file(), 0, 0x30_0000, PAGE as u64).expect("map");
        let stats = dump(&mem, &path).expect("dump");
        assert_eq!((stats.ram_bytes, stats.data_bytes), (16 << 20, 5 * PAGE as u64));
        let file = File::open(&path).expect("open");
        assert_eq!(
            data_extents(&file, 0, 16 << 20).expect("extents").iter().map(|e| e.1).sum::<u64>() % PAGE as u64,
            0
        );

        check(&path, stats.crc32).expect("the checksum of an intact file");
        let first = restore(&path, 16 << 20).expect("restore");
        let second = restore(&path, 16 << 20).expect("restore");
        check_ram(&first);
        assert_eq!(first.read_obj::<u8>(GuestAddress(0x30_0fff)).expect("read"), 0x5a, "the boot file page");
        // A guest that writes every page of its RAM gets private copies:
        // the file and the other VM keep the snapshot's bytes.
        let pattern = vec![0xc3u8; 16 << 20];
        first.write_slice(&pattern, GuestAddress(0)).expect("write all of RAM");
        check_ram(&second);
        assert_eq!(second.read_obj::<u8>(GuestAddress(0x30_0fff)).expect("read"), 0x5a);
        check(&path, stats.crc32).expect("the file is untouched");
        check_ram(&restore(&path, 16 << 20).expect("a third restore"));
        drop(first);
        check_ram(&second);

        // One flipped byte in a data page is caught, on the check's thread.
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&[8u8], 0x10_0000 + 5).expect("corrupt");
        let err = spawn_check(&path, stats.crc32).wait().expect_err("refused").to_string();
        assert!(err.contains("checksum mismatch") && err.contains("memory"), "{err}");
        // Data where the dump left a hole is caught too.
        file.write_all_at(&[7u8], 0x10_0000 + 5).expect("undo");
        check(&path, stats.crc32).expect("intact again");
        file.write_all_at(&[1u8], 0x60_0000).expect("data in a hole");
        assert!(check(&path, stats.crc32).expect_err("refused").to_string().contains("checksum mismatch"));
    }

    #[test]
    fn a_memory_file_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("memory");
        std::fs::write(&path, vec![1u8; PAGE]).expect("write");
        let err = restore(&path, 16 << 20).map(|_| ()).expect_err("refused").to_string();
        assert!(err.contains("4096 bytes; the state says guest RAM is 16777216"), "{err}");
    }
}
