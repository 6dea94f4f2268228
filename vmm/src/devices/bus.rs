//! Address-range dispatch for port I/O and MMIO exits.
//!
//! The bus is assembled before the vCPUs start and is read-only afterwards,
//! so lookups take no lock; each device has its own mutex.

use std::sync::{Arc, Mutex};

/// A device reachable through a [`Bus`]. Offsets are relative to the base
/// address the device was inserted at.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors assembling a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps an existing device or is empty.
    #[error("bus range {base:#x}+{len:#x} overlaps another device or is empty")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| (e.base, e.len))).finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Bus::default()
    }

    /// Serves `[base, base + len)` with `device`.
    pub fn insert(&mut self, device: Arc<Mutex<dyn BusDevice>>, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0).ok_or(BusError::Overlap { base, len })?;
        if self.entries.iter().any(|e| base < e.base + e.len && e.base < end) {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        self.entries.insert(at, Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&Entry, u64)> {
        let at = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(at.checked_sub(1)?)?;
        let offset = addr - entry.base;
        (offset + size as u64 <= entry.len).then_some((entry, offset))
    }

    /// Dispatches a read; false when no device serves the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; false when no device serves the whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering it if another vCPU panicked while holding it:
/// device state is plain data, and one vCPU's panic already ends the VM.
pub fn lock<T: ?Sized>(device: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    device.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_relative_offsets() {
        let mut bus = Bus::new();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev.clone(), 0x3f8, 8).expect("insert");
        let mut byte = [0u8; 1];
        assert!(bus.read(0x3fd, &mut byte));
        assert_eq!(byte[0], 5);
        assert!(bus.write(0x3f8, &[0x41]));
        assert_eq!(lock(&dev).last_write, Some((0, vec![0x41])));
        assert!(!bus.read(0x3f7, &mut byte));
        assert!(!bus.read(0x400, &mut byte));
    }

    #[test]
    fn straddling_accesses_are_not_dispatched() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x1000, 0x10).expect("insert");
        let mut word = [0u8; 4];
        assert!(!bus.read(0x100e, &mut word));
    }

    #[test]
    fn overlaps_are_rejected() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x60, 5).expect("insert");
        let err = bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x64, 1).unwrap_err();
        assert_eq!(err, BusError::Overlap { base: 0x64, len: 1 });
        assert!(bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x65, 0).is_err());
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x65, 1).expect("adjacent is fine");
    }
}
