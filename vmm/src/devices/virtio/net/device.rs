//! The virtio-net device: configuration space (MAC, MTU), and frames moved
//! between the virtqueues and the [`Backend`] (the tap).
//!
//! Descriptor chains come from the guest and are untrusted: virtio-queue's
//! `Reader`/`Writer` check every address against guest memory and the
//! direction of every descriptor; a chain that is too short, too long or
//! out of bounds is returned to the guest unused and counted, never a VMM
//! error.

use crate::devices::virtio::Counters;
use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::metrics::NetMetrics as M;
use super::{feature, DEFAULT_MTU, MAX_BUFFER, MIN_MTU, TYPE_NET, VNET_HDR_LEN};
use crate::devices::virtio::{
    ActivateContext, ActivateError, IrqTrigger, VirtioDevice, INT_VRING, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Receive queue.
pub const RXQ: usize = 0;
/// Transmit queue.
pub const TXQ: usize = 1;
const QUEUE_SIZES: [u16; 2] = [256, 256];
/// Offset of `num_buffers` in the virtio-net header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Where frames go: a tap in production, a SOCK_SEQPACKET socket in tests.
/// Each read or write moves one whole frame with its virtio-net header.
pub trait Backend: Send {
    /// Reads one frame; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
    /// The descriptor to poll for readable frames.
    fn raw_fd(&self) -> RawFd;
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The MTU is out of range.
    #[error("MTU {0} is out of range ({MIN_MTU}..={max})", max = MAX_BUFFER - VNET_HDR_LEN - 18)]
    BadMtu(u16),
    /// The MAC is not a unicast address.
    #[error("MAC {0} is a multicast address; a NIC needs a unicast one")]
    MulticastMac(String),
    /// An eventfd could not be created.
    #[error("net eventfd: {0}")]
    EventFd(io::Error),
}

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

/// The network device.
pub struct Net {
    config: [u8; 12],
    queue_evts: Vec<EventFd>,
    interrupt: Arc<IrqTrigger>,
    backend: Box<dyn Backend>,
    pub(super) metrics: Arc<M>,
    active: Option<Active>,
    /// A frame read from the backend, waiting for an RX buffer.
    rx_frame: Vec<u8>,
    rx_len: usize,
    /// The guest has no RX buffers: stop polling the backend until it
    /// posts some (otherwise a readable tap would spin the event loop).
    pub(super) rx_waiting: bool,
    /// The backend is registered with the event loop.
    pub(super) backend_polled: bool,
    tx_frame: Vec<u8>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net").field("mac", &&self.config[..6]).field("active", &self.active.is_some()).finish()
    }
}

impl Net {
    /// A NIC with address `mac` and `mtu` (None: 1500) on `backend`.
    pub fn new(
        mac: [u8; 6],
        mtu: Option<u16>,
        backend: Box<dyn Backend>,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<Self, NetError> {
        let mtu = mtu.unwrap_or(DEFAULT_MTU);
        if !(MIN_MTU..=(MAX_BUFFER - VNET_HDR_LEN - 18) as u16).contains(&mtu) {
            return Err(NetError::BadMtu(mtu));
        }
        if mac[0] & 1 != 0 {
            return Err(NetError::MulticastMac(super::format_mac(&mac)));
        }
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        // status (6..8) and max_virtqueue_pairs (8..10) are not offered.
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        let queue_evts = QUEUE_SIZES
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(NetError::EventFd))
            .collect::<Result<_, _>>()?;
        Ok(Net {
            config,
            queue_evts,
            interrupt,
            backend,
            metrics: Arc::new(M::default()),
            active: None,
            rx_frame: vec![0; MAX_BUFFER],
            rx_len: 0,
            rx_waiting: false,
            backend_polled: false,
            tx_frame: vec![0; MAX_BUFFER],
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<M> {
        self.metrics.clone()
    }

    /// Whether the driver has set the device up.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The backend descriptor to poll.
    pub fn backend_fd(&self) -> RawFd {
        self.backend.raw_fd()
    }

    fn signal_used(&self) {
        if let Err(e) = self.interrupt.trigger(INT_VRING) {
            tracing::error!(error = %e, "net: cannot raise the interrupt");
        }
    }

    /// Reads the next frame from the backend into `rx_frame`; false when
    /// none is waiting.
    fn fill_rx_frame(&mut self) -> bool {
        while self.rx_len == 0 {
            match self.backend.read_frame(&mut self.rx_frame) {
                Ok(n) if n >= VNET_HDR_LEN => self.rx_len = n,
                Ok(_) => M::inc(&self.metrics.rx_dropped),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "net: backend read failed");
                    M::inc(&self.metrics.tap_errors);
                    return false;
                }
            }
        }
        true
    }

    /// Moves frames from the backend into the guest's RX buffers until
    /// either runs out.
    pub fn process_rx(&mut self) {
        if self.active.is_none() {
            return;
        }
        let mut used = false;
        while self.fill_rx_frame() {
            let Some(active) = self.active.as_mut() else { return };
            let mem = &active.mem;
            let queue = &mut active.queues[RXQ];
            let Some(chain) = crate::devices::virtio::next_chain(queue, mem, &self.metrics.bad_descriptors) else {
                self.rx_waiting = true;
                break;
            };
            self.rx_waiting = false;
            let head = chain.head_index();
            let frame = &mut self.rx_frame[..self.rx_len];
            // No mergeable buffers: the whole frame goes in one chain.
            frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            let written = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= frame.len() => w.write_all(frame).map(|()| frame.len()),
                Ok(w) => {
                    // Larger than the guest allows (above its MTU): drop the
                    // frame, keep the buffer for the next one.
                    tracing::debug!(frame = frame.len(), buffer = w.available_bytes(), "net: RX frame too large");
                    M::inc(&self.metrics.rx_dropped);
                    self.rx_len = 0;
                    queue.go_to_previous_position();
                    continue;
                }
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            let len = match written {
                Ok(n) => {
                    M::inc(&self.metrics.rx_frames);
                    M::add(&self.metrics.rx_bytes, (n - VNET_HDR_LEN) as u64);
                    self.rx_len = 0;
                    n
                }
                Err(e) => {
                    // The chain is bad, not the frame: try it on the next one.
                    tracing::debug!(error = %e, "net: bad RX descriptor chain");
                    M::inc(&self.metrics.bad_descriptors);
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len as u32) {
                tracing::warn!(error = %e, "net: cannot return an RX buffer");
                break;
            }
            used = true;
        }
        if used {
            self.notify(RXQ);
        }
    }

    fn notify(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else { return };
        if active.queues[index].needs_notification(&active.mem).unwrap_or(true) {
            self.signal_used();
        }
    }

    /// Writes the guest's TX frames to the backend.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let mem = &active.mem;
        let queue = &mut active.queues[TXQ];
        let mut used = false;
        while let Some(chain) = crate::devices::virtio::next_chain(queue, mem, &self.metrics.bad_descriptors) {
            let head = chain.head_index();
            let frame = chain.reader(mem).map_err(|e| e.to_string());
            match frame.and_then(|mut r| read_tx_frame(&mut r, &mut self.tx_frame)) {
                Ok(len) => match self.backend.write_frame(&self.tx_frame[..len]) {
                    Ok(()) => {
                        M::inc(&self.metrics.tx_frames);
                        M::add(&self.metrics.tx_bytes, (len - VNET_HDR_LEN) as u64);
                    }
                    Err(e) => {
                        // A full tap queue or a downed link drops the frame,
                        // as a NIC would.
                        tracing::debug!(error = %e, "net: backend write failed");
                        M::inc(&self.metrics.tx_dropped);
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "net: bad TX descriptor chain");
                    M::inc(&self.metrics.bad_descriptors);
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                tracing::warn!(error = %e, "net: cannot return a TX buffer");
                break;
            }
            used = true;
        }
        if used {
            self.notify(TXQ);
        }
    }
}

/// Copies one TX chain (header + frame) into `buf`, returning its length.
/// The header's offload fields are cleared: no offloads were negotiated,
/// so whatever the guest put there must not reach the host's GSO code.
fn read_tx_frame<B: vm_memory::bitmap::BitmapSlice>(
    reader: &mut virtio_queue::Reader<'_, B>,
    buf: &mut [u8],
) -> Result<usize, String> {
    let len = reader.available_bytes();
    if len < VNET_HDR_LEN || len > buf.len() {
        return Err(format!("TX chain of {len} bytes (must be {VNET_HDR_LEN}..={})", buf.len()));
    }
    reader.read_exact(&mut buf[..len]).map_err(|e| e.to_string())?;
    buf[..VNET_HDR_LEN].fill(0);
    Ok(len)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | feature::MAC | feature::MTU
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // With VERSION_1 the MAC is read-only (virtio 1.2, 5.1.4.2).
        M::inc(&self.metrics.config_writes);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError(format!("net needs 2 queues, got {}", ctx.queues.len())));
        }
        self.active = Some(Active { mem: ctx.mem, queues: ctx.queues });
        self.rx_waiting = false;
        tracing::debug!("net device activated");
        self.process_tx();
        self.process_rx();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_len = 0;
        self.rx_waiting = false;
    }

    fn quiesce(&mut self) -> Result<Vec<virtio_queue::QueueState>, String> {
        // Processed on the VMM thread only, which takes the snapshot. A frame
        // read from the tap but not yet delivered is not saved: to the guest
        // it is a dropped packet, which TCP recovers from.
        let active = self.active.as_ref().ok_or("net is not active")?;
        Ok(active.queues.iter().map(|q| q.state()).collect())
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
