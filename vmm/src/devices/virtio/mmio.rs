//! The virtio-mmio transport, version 2 (virtio 1.x, section 4.2).
//!
//! rust-vmm has no maintained standalone transport crate (Firecracker and
//! Cloud Hypervisor keep theirs in-tree), so this one is ours. It owns the
//! register file and queue configuration and activates the device when the
//! driver sets DRIVER_OK. Everything the guest writes here is untrusted:
//! bad sizes or addresses make activation fail with DEVICE_NEEDS_RESET,
//! never a VMM error.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{ActivateContext, IrqTrigger, VirtioDevice, INT_CONFIG};
use crate::devices::bus::{lock, BusDevice};
use crate::snapshot::{QueueSnapshot, TransportSnapshot};

const MMIO_MAGIC: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;

pub(crate) const REG_MAGIC: u64 = 0x000;
pub(crate) const REG_VERSION: u64 = 0x004;
pub(crate) const REG_DEVICE_ID: u64 = 0x008;
pub(crate) const REG_VENDOR_ID: u64 = 0x00c;
pub(crate) const REG_DEVICE_FEATURES: u64 = 0x010;
pub(crate) const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub(crate) const REG_DRIVER_FEATURES: u64 = 0x020;
pub(crate) const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub(crate) const REG_QUEUE_SEL: u64 = 0x030;
pub(crate) const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub(crate) const REG_QUEUE_NUM: u64 = 0x038;
pub(crate) const REG_QUEUE_READY: u64 = 0x044;
pub(crate) const REG_QUEUE_NOTIFY: u64 = 0x050;
pub(crate) const REG_INTERRUPT_STATUS: u64 = 0x060;
pub(crate) const REG_INTERRUPT_ACK: u64 = 0x064;
pub(crate) const REG_STATUS: u64 = 0x070;
pub(crate) const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub(crate) const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub(crate) const REG_QUEUE_AVAIL_LOW: u64 = 0x090;
pub(crate) const REG_QUEUE_AVAIL_HIGH: u64 = 0x094;
pub(crate) const REG_QUEUE_USED_LOW: u64 = 0x0a0;
pub(crate) const REG_QUEUE_USED_HIGH: u64 = 0x0a4;
pub(crate) const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub(crate) const CONFIG_SPACE: u64 = 0x100;

/// Offset of QueueNotify, where the VMM registers the queue ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = REG_QUEUE_NOTIFY;

/// Device status bits (virtio 1.x, 2.1).
pub mod status {
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error and needs a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up.
    pub const FAILED: u32 = 128;
}

/// One virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<IrqTrigger>,
    mem: GuestMemoryMmap,
    device_type: u32,
    avail_features: u64,
    features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    /// The driver wrote feature bits we never offered.
    bad_features: bool,
    queue_select: u32,
    queues: Vec<Queue>,
    status: u32,
    activated: bool,
    config_generation: u32,
    log_budget: super::GuestLogBudget,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish()
    }
}

fn fresh_queues(sizes: &[u16]) -> Vec<Queue> {
    sizes
        .iter()
        .map(|&max| Queue::new(max).unwrap_or_else(|_| panic!("device declares an invalid queue size {max}")))
        .collect()
}

impl MmioTransport {
    /// Wraps `device`, whose interrupt status is `interrupt`.
    pub fn new(mem: GuestMemoryMmap, device: Arc<Mutex<dyn VirtioDevice>>, interrupt: Arc<IrqTrigger>) -> Self {
        let (device_type, avail_features, queues) = {
            let dev = lock(&device);
            (dev.device_type(), dev.avail_features(), fresh_queues(dev.queue_max_sizes()))
        };
        MmioTransport {
            device,
            interrupt,
            mem,
            device_type,
            avail_features,
            features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            bad_features: false,
            queue_select: 0,
            queues,
            status: 0,
            activated: false,
            config_generation: 0,
            log_budget: super::GuestLogBudget::default(),
        }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.activated || self.status & status::FEATURES_OK == 0 {
            // Queue layout is fixed once running and only settable after
            // feature negotiation.
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size()).collect();
        self.queues = fresh_queues(&sizes);
        self.features_select = 0;
        self.driver_features_select = 0;
        self.acked_features = 0;
        self.bad_features = false;
        self.queue_select = 0;
        self.status = 0;
        self.activated = false;
        self.interrupt.clear();
    }

    fn fail(&mut self, reason: &str) {
        if self.log_budget.allow() {
            tracing::warn!(device_type = self.device_type, reason, "virtio device needs reset");
        }
        self.status |= status::DEVICE_NEEDS_RESET;
        if let Err(e) = self.interrupt.trigger(INT_CONFIG) {
            tracing::error!(error = %e, "cannot raise the config interrupt");
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        let newly = value & !self.status;
        if newly & status::FEATURES_OK != 0 && self.bad_features {
            // The driver reads status back and sees negotiation failed.
            value &= !status::FEATURES_OK;
        }
        self.status = value;
        if newly & status::DRIVER_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        if self.status & status::FEATURES_OK == 0 {
            return self.fail("DRIVER_OK without FEATURES_OK");
        }
        if let Some(index) = self.queues.iter().position(|q| !q.is_valid(&self.mem)) {
            return self.fail(&format!("queue {index} is not ready or its rings are outside guest memory"));
        }
        let event_idx = self.acked_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
        // The device gets its own copies; ours keep answering register reads.
        let mut queues = Vec::with_capacity(self.queues.len());
        for queue in &self.queues {
            match Queue::try_from(queue.state()) {
                Ok(mut copy) => {
                    copy.set_event_idx(event_idx);
                    queues.push(copy);
                }
                Err(e) => return self.fail(&format!("queue state rejected: {e}")),
            }
        }
        let ctx = ActivateContext { mem: self.mem.clone(), queues, acked_features: self.acked_features };
        let result = lock(&self.device).activate(ctx);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => self.fail(&e.to_string()),
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MMIO_MAGIC,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.features_select {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.queues.get(self.queue_select as usize).map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self.queues.get(self.queue_select as usize).map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!(offset, "read of unknown virtio-mmio register");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.features_select = value,
            REG_DRIVER_FEATURES => {
                if self.status & status::FEATURES_OK != 0 || self.driver_features_select > 1 {
                    return;
                }
                let shift = 32 * self.driver_features_select;
                let page = u64::from(value) << shift;
                if page & !self.avail_features != 0 {
                    self.bad_features = true;
                }
                self.acked_features = (self.acked_features & !(0xffff_ffffu64 << shift)) | (page & self.avail_features);
            }
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(value.min(u32::from(u16::MAX)) as u16);
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            REG_QUEUE_NOTIFY => {
                // Kicks are delivered by ioeventfd; one that lands here has a
                // queue index no ioeventfd matches.
                tracing::debug!(queue = value, "notify for a queue the device does not have");
            }
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.set_status(value),
            REG_QUEUE_DESC_LOW => self.set_queue_addr(|q| q.set_desc_table_address(Some(value), None)),
            REG_QUEUE_DESC_HIGH => self.set_queue_addr(|q| q.set_desc_table_address(None, Some(value))),
            REG_QUEUE_AVAIL_LOW => self.set_queue_addr(|q| q.set_avail_ring_address(Some(value), None)),
            REG_QUEUE_AVAIL_HIGH => self.set_queue_addr(|q| q.set_avail_ring_address(None, Some(value))),
            REG_QUEUE_USED_LOW => self.set_queue_addr(|q| q.set_used_ring_address(Some(value), None)),
            REG_QUEUE_USED_HIGH => self.set_queue_addr(|q| q.set_used_ring_address(None, Some(value))),
            _ => tracing::debug!(offset, value, "write to unknown or read-only virtio-mmio register"),
        }
    }

    fn set_queue_addr(&mut self, set: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected_queue() {
            set(q);
        }
    }

    /// The register file and queues for a snapshot; an activated device
    /// stops processing its queues ([`VirtioDevice::quiesce`]) until
    /// [`MmioTransport::resume`]. The vCPUs must be paused.
    pub fn snapshot(&mut self) -> Result<TransportSnapshot, String> {
        let device_queues = if self.activated {
            lock(&self.device).quiesce()?.into_iter().map(QueueSnapshot::from).collect()
        } else {
            Vec::new()
        };
        Ok(TransportSnapshot {
            device_type: self.device_type,
            features_select: self.features_select,
            driver_features_select: self.driver_features_select,
            acked_features: self.acked_features,
            bad_features: self.bad_features,
            queue_select: self.queue_select,
            status: self.status,
            activated: self.activated,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: self.queues.iter().map(|q| QueueSnapshot::from(q.state())).collect(),
            device_queues,
        })
    }

    /// Lets the device process its queues again after a snapshot.
    pub fn resume(&mut self) -> Result<(), String> {
        if self.activated {
            lock(&self.device).resume()?;
        }
        Ok(())
    }

    /// Puts a freshly created transport into a snapshot's state, activating
    /// the device at the saved queue positions. A snapshot that does not fit
    /// this device (type, queue count, invalid queues) is refused.
    pub fn restore(&mut self, snap: &TransportSnapshot) -> Result<(), String> {
        if snap.device_type != self.device_type {
            return Err(format!("device type {} in the snapshot, {} here", snap.device_type, self.device_type));
        }
        let max_sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size()).collect();
        let queues = |list: &[QueueSnapshot]| -> Result<Vec<Queue>, String> {
            if list.len() != max_sizes.len() {
                return Err(format!("{} queues in the snapshot, the device has {}", list.len(), max_sizes.len()));
            }
            list.iter()
                .zip(&max_sizes)
                .enumerate()
                .map(|(index, (q, &ours))| {
                    if q.max_size != ours {
                        return Err(format!("queue {index}: max size {} in the snapshot, {ours} here", q.max_size));
                    }
                    Queue::try_from(virtio_queue::QueueState::from(*q)).map_err(|e| format!("queue {index}: {e}"))
                })
                .collect()
        };
        self.queues = queues(&snap.queues)?;
        self.features_select = snap.features_select;
        self.driver_features_select = snap.driver_features_select;
        self.acked_features = snap.acked_features & self.avail_features;
        self.bad_features = snap.bad_features;
        self.queue_select = snap.queue_select;
        self.status = snap.status;
        self.config_generation = snap.config_generation;
        self.interrupt.set_status(snap.interrupt_status);
        if snap.activated {
            let device_queues = queues(&snap.device_queues)?;
            if let Some(index) = device_queues.iter().position(|q| q.ready() && !q.is_valid(&self.mem)) {
                return Err(format!("queue {index}: rings outside guest memory"));
            }
            let states: Vec<virtio_queue::QueueState> = device_queues.iter().map(|q| q.state()).collect();
            let ctx =
                ActivateContext { mem: self.mem.clone(), queues: device_queues, acked_features: self.acked_features };
            let mut device = lock(&self.device);
            device.check_restorable(&states)?;
            device.activate(ctx).map_err(|e| e.to_string())?;
            self.activated = true;
        }
        Ok(())
    }

    /// Tells a restored, activated device that the vCPUs are back
    /// ([`VirtioDevice::restored`]), and raises the IRQ again if the
    /// interrupt status is not clear. Not part of [`MmioTransport::restore`]:
    /// an interrupt raised before the vCPUs' saved local APIC state is
    /// loaded is lost with it — those of the snapshot's last moments (a
    /// device's quiesce returning buffers after the interrupt controllers
    /// were saved) and those of the activation at restore (a device
    /// looking at its queues). The status bits survive both; the guest's
    /// handler reads them and finds the used buffers.
    pub fn vcpus_restored(&self) {
        if self.activated {
            lock(&self.device).restored();
        }
        if self.interrupt.status() != 0 {
            if let Err(e) = self.interrupt.irqfd().write(1) {
                tracing::warn!(error = %e, device_type = self.device_type, "cannot raise a restored device's pending interrupt");
            }
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 {
            let value = self.read_register(offset);
            data.copy_from_slice(&value.to_le_bytes());
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::{ActivateError, VIRTIO_F_VERSION_1};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    struct Dummy {
        activated: Option<ActivateContext>,
        resets: u32,
        evts: Vec<EventFd>,
        fail: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.evts
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[0xaa, 0xbb], offset, data);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError("nope".into()));
            }
            self.activated = Some(ctx);
            Ok(())
        }
        fn reset(&mut self) {
            self.activated = None;
            self.resets += 1;
        }
    }

    fn setup(fail: bool) -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("memory");
        let dev = Arc::new(Mutex::new(Dummy { activated: None, resets: 0, evts: vec![], fail }));
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")));
        (MmioTransport::new(mem, dev.clone(), irq), dev)
    }

    fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn w(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, page0: u32, page1: u32) {
        w(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, page0);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, page1);
        w(t, REG_STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, base: u32) {
        w(t, REG_QUEUE_SEL, index);
        w(t, REG_QUEUE_NUM, 16);
        w(t, REG_QUEUE_DESC_LOW, base);
        w(t, REG_QUEUE_AVAIL_LOW, base + 0x1000);
        w(t, REG_QUEUE_USED_LOW, base + 0x2000);
        w(t, REG_QUEUE_READY, 1);
    }

    const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identifies_itself() {
        let (mut t, _) = setup(false);
        assert_eq!(r(&mut t, REG_MAGIC), MMIO_MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        let mut cfg = [0u8; 2];
        t.read(CONFIG_SPACE, &mut cfg);
        assert_eq!(cfg, [0xaa, 0xbb]);
    }

    #[test]
    fn full_handshake_activates_the_device() {
        let (mut t, dev) = setup(false);
        negotiate(&mut t, 1, 1);
        assert_ne!(r(&mut t, REG_STATUS) & status::FEATURES_OK, 0);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        let guard = lock(&dev);
        let ctx = guard.activated.as_ref().expect("activated");
        assert_eq!(ctx.acked_features, VIRTIO_F_VERSION_1 | 1);
        assert_eq!(ctx.queues.len(), 2);
        assert_eq!(ctx.queues[1].desc_table(), 0x2_0000);
    }

    #[test]
    fn unoffered_features_fail_negotiation() {
        let (mut t, _) = setup(false);
        negotiate(&mut t, 1 | (1 << 5), 1);
        assert_eq!(r(&mut t, REG_STATUS) & status::FEATURES_OK, 0);
    }

    #[test]
    fn queues_outside_memory_need_reset() {
        let (mut t, dev) = setup(false);
        negotiate(&mut t, 1, 1);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0xfff0_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(lock(&dev).activated.is_none());
        assert_ne!(r(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & INT_CONFIG, 0);
    }

    #[test]
    fn missing_queue_setup_needs_reset() {
        let (mut t, dev) = setup(false);
        negotiate(&mut t, 1, 1);
        setup_queue(&mut t, 0, 0x1_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        assert!(lock(&dev).activated.is_none());
        assert_ne!(r(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn device_refusal_needs_reset_and_reset_recovers() {
        let (mut t, dev) = setup(true);
        negotiate(&mut t, 1, 1);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        assert_ne!(r(&mut t, REG_STATUS) & status::DEVICE_NEEDS_RESET, 0);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(lock(&dev).resets, 1);
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0, "queues forgotten");
    }

    #[test]
    fn queue_layout_is_frozen_after_activation() {
        let (mut t, dev) = setup(false);
        negotiate(&mut t, 1, 1);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
        assert!(lock(&dev).activated.is_some());
    }

    #[test]
    fn odd_sized_and_unknown_accesses_are_harmless() {
        let (mut t, _) = setup(false);
        t.write(REG_STATUS, &[1, 2]);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        let mut one = [0xffu8];
        t.read(REG_MAGIC, &mut one);
        assert_eq!(one, [0]);
        w(&mut t, 0x0f0, 5);
        w(&mut t, REG_QUEUE_SEL, 99);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
    }
}
