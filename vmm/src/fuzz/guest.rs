//! A guest driver that does whatever its input says: the virtio-mmio
//! registers in any order with any values, and any bytes anywhere in a
//! small guest RAM (descriptor tables, rings and buffers included).

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::Input;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::mmio::{self, status, MmioTransport};
use crate::devices::virtio::{IrqTrigger, VirtioDevice};

/// Guest RAM of the fuzzed VM: small, so arbitrary addresses often land in
/// it and often just past it.
pub const MEM_SIZE: u64 = 0x1_0000;

/// The hostile driver of one device.
#[derive(Debug)]
pub struct HostileDriver {
    mem: GuestMemoryMmap,
    transport: MmioTransport,
}

impl HostileDriver {
    /// Drives `device` (whose interrupt is `interrupt`) in `mem`.
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>, interrupt: Arc<IrqTrigger>) -> Self {
        HostileDriver { transport: MmioTransport::new(mem.clone(), device, interrupt), mem }
    }

    /// Guest RAM with a plain (anonymous) mapping.
    pub fn anonymous_memory() -> GuestMemoryMmap {
        // A 64 KiB anonymous mapping at 0 cannot fail short of ENOMEM.
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .unwrap_or_else(|e| panic!("fuzz guest memory: {e}"))
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// Runs generic operation `op` (0 to 3); false for any other opcode,
    /// which the device's own harness handles.
    pub fn step(&mut self, op: u8, input: &mut Input<'_>) -> bool {
        match op {
            // Any bytes at any address (writes past RAM fail, as they must).
            0 => {
                let addr = u64::from(input.u16());
                let len = usize::from(input.u8());
                let _ = self.mem.write_slice(input.bytes(len), GuestAddress(addr));
            }
            // Any register or config-space word, any value, any width.
            1 => {
                let offset = u64::from(input.u8()) * 4;
                let value = input.u32();
                match input.u8() % 3 {
                    0 => self.write_register(offset, value),
                    1 => self.transport.write(offset, &value.to_le_bytes()[..1]),
                    _ => self.transport.write(offset + 1, &value.to_le_bytes()[..2]),
                }
            }
            2 => {
                let offset = u64::from(input.u8()) * 4;
                let _ = self.read_register(offset);
            }
            3 => self.bring_up(input),
            _ => return false,
        }
        true
    }

    /// What a real driver does, with queue sizes and ring addresses from
    /// the input: reaches the device's queue code far more often than
    /// random register writes would.
    fn bring_up(&mut self, input: &mut Input<'_>) {
        self.write_register(mmio::REG_STATUS, 0);
        self.write_register(mmio::REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        for page in 0..2 {
            self.write_register(mmio::REG_DEVICE_FEATURES_SEL, page);
            let offered = self.read_register(mmio::REG_DEVICE_FEATURES);
            self.write_register(mmio::REG_DRIVER_FEATURES_SEL, page);
            self.write_register(mmio::REG_DRIVER_FEATURES, offered & input.u32());
        }
        self.write_register(mmio::REG_STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
        for queue in 0..u32::from(input.u8() % 4) {
            self.write_register(mmio::REG_QUEUE_SEL, queue);
            self.write_register(mmio::REG_QUEUE_NUM, 1 << (input.u8() % 9));
            self.write_register(mmio::REG_QUEUE_DESC_LOW, u32::from(input.u16()));
            self.write_register(mmio::REG_QUEUE_AVAIL_LOW, u32::from(input.u16()));
            self.write_register(mmio::REG_QUEUE_USED_LOW, u32::from(input.u16()));
            self.write_register(mmio::REG_QUEUE_READY, 1);
        }
        self.write_register(
            mmio::REG_STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
    }
}

/// A fresh directory for a fuzz run's sockets, removed on drop. (tempfile
/// is a dev-dependency; the harness is part of the library.)
#[derive(Debug)]
pub struct RunDir(pub std::path::PathBuf);

impl RunDir {
    /// Creates `$TMPDIR/kata-like-fuzz-<pid>-<n>`.
    pub fn new() -> std::io::Result<RunDir> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kata-like-fuzz-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(RunDir(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
