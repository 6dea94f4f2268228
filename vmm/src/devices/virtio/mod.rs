//! virtio devices over the virtio-mmio transport.
//!
//! * [`mmio`]: the transport (register file, feature negotiation, status
//!   machine, queue configuration).
//! * [`vsock`]: the userspace virtio-vsock device with Firecracker's hybrid
//!   vsock backend.
//! * [`fs`]: virtio-fs, a vhost-user frontend to virtiofsd.
//! * [`net`]: virtio-net on a tap device.
//! * [`balloon`]: virtio-balloon, for free page reporting.
//!
//! Queues are `virtio_queue::Queue`; guest kicks arrive on ioeventfds and
//! interrupts leave through irqfds, so the vCPU threads only see register
//! accesses and the devices run on the VMM thread's event loop.

pub mod balloon;
pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub mod test_chains;
pub mod vsock;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use virtio_queue::{Queue, QueueState};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: virtio 1.0 or later (required for virtio-mmio version 2).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: used/avail event index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device type of virtio-vsock.
pub const TYPE_VSOCK: u32 = 19;

/// Interrupt status bit: a used ring changed.
pub const INT_VRING: u32 = 0x1;
/// Interrupt status bit: the configuration changed (or the device needs reset).
pub const INT_CONFIG: u32 = 0x2;

/// The interrupt of one virtio-mmio device: the status register the driver
/// reads and acknowledges, and the irqfd that raises the guest IRQ.
#[derive(Debug)]
pub struct IrqTrigger {
    status: AtomicU32,
    irqfd: EventFd,
}

impl IrqTrigger {
    /// An interrupt raised through `irqfd` (registered with KVM_IRQFD).
    pub fn new(irqfd: EventFd) -> Self {
        IrqTrigger { status: AtomicU32::new(0), irqfd }
    }

    /// Sets `kind` ([`INT_VRING`] or [`INT_CONFIG`]) and raises the IRQ.
    pub fn trigger(&self, kind: u32) -> std::io::Result<()> {
        self.status.fetch_or(kind, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// The eventfd to register with KVM_IRQFD.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the InterruptStatus register (restore).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// Clears all pending status (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// What a device receives when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The configured queues, in index order.
    pub queues: Vec<Queue>,
    /// Features the driver acknowledged.
    pub acked_features: u64,
}

/// Why a device refused activation.
#[derive(Debug, thiserror::Error)]
#[error("virtio device activation failed: {0}")]
pub struct ActivateError(pub String);

/// A virtio device behind a [`mmio::MmioTransport`].
pub trait VirtioDevice: Send {
    /// virtio device type ID.
    fn device_type(&self) -> u32;
    /// Features offered to the driver.
    fn avail_features(&self) -> u64;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Eventfds the transport registers as ioeventfds on QueueNotify, one
    /// per queue, signalled with the queue index.
    fn queue_events(&self) -> &[EventFd];
    /// Reads device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the driver's queues.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the device and forgets its queues (driver wrote status 0).
    fn reset(&mut self);
    /// For a snapshot, with the vCPUs paused: stops processing the queues
    /// and returns the device's queue positions, in index order. Only called
    /// on an activated device.
    fn quiesce(&mut self) -> Result<Vec<QueueState>, String> {
        Err(format!("virtio device type {} does not support snapshots", self.device_type()))
    }
    /// The VM goes on after a snapshot: undoes [`VirtioDevice::quiesce`].
    fn resume(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Whether the device can take up these saved queue positions in a new
    /// VMM (called before activation on restore).
    fn check_restorable(&self, _device_queues: &[QueueState]) -> Result<(), String> {
        Ok(())
    }
    /// Called once on a device activated from a snapshot, after the vCPUs'
    /// saved state is loaded and before they run, so that an interrupt it
    /// raises reaches the guest (vsock tells the guest its connections are
    /// gone).
    fn restored(&mut self) {}
}

/// Event counters of a device (all monotonically increasing), logged as
/// `name=value` pairs when the VMM exits.
pub trait Counters {
    /// Adds one to `counter`.
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// `name=value` pairs separated by spaces.
    fn render(pairs: &[(&str, &AtomicU64)]) -> String {
        let parts: Vec<String> =
            pairs.iter().map(|(name, c)| format!("{name}={}", c.load(Ordering::Relaxed))).collect();
        parts.join(" ")
    }
}

/// How many log lines a guest can make a device write about its own
/// misbehaviour: past that they are counted, not logged. The guest decides
/// how often it misbehaves, and the VMM log is a file on the host.
#[derive(Debug, Default)]
pub struct GuestLogBudget {
    used: AtomicU32,
}

impl GuestLogBudget {
    /// Lines logged before the budget is spent.
    pub const LINES: u32 = 16;

    /// Whether to log this event; the last allowed one says that further
    /// ones are suppressed.
    pub fn allow(&self) -> bool {
        let n = self.used.fetch_add(1, Ordering::Relaxed);
        if n + 1 == Self::LINES {
            tracing::warn!("further guest-caused warnings of this device are not logged");
        }
        n < Self::LINES
    }
}

/// The next descriptor chain the guest made available on `queue`, or None
/// when there is none. With none, notifications are re-enabled and the
/// ring is looked at once more, so a chain added meanwhile is not left
/// waiting for a kick that never comes. A ring that still claims chains but
/// yields none (an avail index more than a queue size ahead, a ring outside
/// guest memory) is counted in `bad_descriptors` and also gives None: the
/// caller ends this pass over the queue instead of spinning on it — such an
/// index, found by the `vsock_guest` fuzz target, made the event loop spin
/// forever.
pub fn next_chain<M>(queue: &mut Queue, mem: M, bad_descriptors: &AtomicU64) -> Option<virtio_queue::DescriptorChain<M>>
where
    M: Clone + std::ops::Deref,
    M::Target: vm_memory::GuestMemory + Sized,
{
    use virtio_queue::QueueT;
    if let Some(chain) = queue.pop_descriptor_chain(mem.clone()) {
        return Some(chain);
    }
    let chain = match queue.enable_notification(&*mem) {
        Ok(false) => return None,
        Ok(true) => queue.pop_descriptor_chain(mem),
        Err(_) => None,
    };
    if chain.is_none() {
        tracing::debug!("virtio: the available ring claims chains it does not yield");
        bad_descriptors.fetch_add(1, Ordering::Relaxed);
    }
    chain
}

/// Copies `src[offset..]` into `data` for a config-space read, leaving bytes
/// beyond the end of `src` as 0 (out-of-range reads are not errors).
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(offset) = usize::try_from(offset) else { return };
    if let Some(tail) = src.get(offset..) {
        let n = tail.len().min(data.len());
        data[..n].copy_from_slice(&tail[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_clip_to_the_config_space() {
        let cfg = [1u8, 2, 3, 4];
        let mut data = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn a_guest_can_only_fill_the_log_so_far() {
        let budget = GuestLogBudget::default();
        let logged = (0..1000).filter(|_| budget.allow()).count();
        assert_eq!(logged, GuestLogBudget::LINES as usize);
    }

    #[test]
    fn interrupt_status_is_set_and_acknowledged() {
        let irq = IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        irq.trigger(INT_VRING).expect("trigger");
        irq.trigger(INT_CONFIG).expect("trigger");
        assert_eq!(irq.status(), INT_VRING | INT_CONFIG);
        irq.ack(INT_VRING);
        assert_eq!(irq.status(), INT_CONFIG);
        assert_eq!(irq.irqfd.read().expect("irq raised"), 2);
    }
}
