//! The virtio-vsock device: configuration (guest CID), queues, and moving
//! packets between the virtqueues and the [`HybridVsockMuxer`].
//!
//! Descriptor chains come from the guest and are untrusted: [`super::packet`]
//! checks directions, lengths and bounds and takes a packet laid out over any
//! number of descriptors; a chain it rejects is returned to the guest unused
//! and counted, never a VMM error.

use crate::devices::virtio::Counters;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::metrics::VsockMetrics as M;
use super::muxer::{HybridVsockMuxer, MuxerError};
use super::packet::{read_tx, scratch_slice, RxBuffer};
use crate::devices::virtio::{
    ActivateContext, ActivateError, IrqTrigger, VirtioDevice, INT_VRING, TYPE_VSOCK, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// Queue indices.
pub const RXQ: usize = 0;
/// Transmit queue.
pub const TXQ: usize = 1;
/// Event queue (transport reset events, sent after a restore).
pub const EVQ: usize = 2;
const QUEUE_SIZES: [u16; 3] = [256, 256, 16];
/// virtio-vsock event id: the transport was reset (virtio 1.2, 5.10.6.5).
const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
/// Consumed TX buffers returned to the guest together, under one interrupt.
///
/// A TX buffer's return only lets the guest free its packet: its data has
/// already gone to the host socket. Returning each one at once costs the
/// guest an interrupt, and with it a wake-up of its TX worker, per packet;
/// batching costs nothing but holding a few packets' memory a little
/// longer. At most `TX_USED_BATCH - 1` of the 256 ring slots are held.
pub(super) const TX_USED_BATCH: usize = 16;
/// The longest a consumed TX buffer waits for its batch: the guest's
/// packets are freed in bounded time when it stops sending.
pub(super) const TX_USED_DELAY: Duration = Duration::from_millis(20);
/// The longest host data waits for the guest to take a transport reset.
const RESET_ACK_TIMEOUT: Duration = Duration::from_secs(2);

struct Active {
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    config: [u8; 8],
    queue_evts: Vec<EventFd>,
    interrupt: Arc<IrqTrigger>,
    pub(super) muxer: HybridVsockMuxer,
    pub(super) metrics: Arc<M>,
    active: Option<Active>,
    /// TX processing stopped because the RX backlog was full.
    tx_paused: bool,
    /// Payload bytes on their way between a chain and the muxer (at most
    /// `MAX_PKT_DATA`; reused for every packet).
    scratch: Vec<u8>,
    /// Heads of TX chains consumed and not yet returned ([`TX_USED_BATCH`]).
    tx_used: Vec<u16>,
    /// The device's one-shot timer ([`TX_USED_DELAY`]): returns TX buffers
    /// held back, and looks again whether the guest took a transport reset.
    pub(super) timer: TimerFd,
    timer_armed: bool,
    /// After a transport reset: the guest's event-queue available index
    /// then, and when. Until the guest has taken the reset (it refills the
    /// event buffer, moving that index), nothing goes to its RX queue: a
    /// host connection it accepted first would be closed by the reset that
    /// its own workqueue handles after the RX work (Linux queues both from
    /// one interrupt, RX first), leaving the host end talking to nobody.
    reset_unseen: Option<(std::num::Wrapping<u16>, std::time::Instant)>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock").field("cid", &self.cid).field("active", &self.active.is_some()).finish()
    }
}

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved.
    #[error("guest CID {0} is reserved; use 3 or more")]
    ReservedCid(u64),
    /// The backend could not be set up.
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    /// An eventfd could not be created.
    #[error("vsock eventfd: {0}")]
    EventFd(std::io::Error),
    /// The device timer could not be created.
    #[error("vsock timerfd: {0}")]
    TimerFd(std::io::Error),
}

impl Vsock {
    /// A device for guest `cid`, serving host connections on `uds_path`.
    pub fn new(cid: u64, uds_path: &Path, interrupt: Arc<IrqTrigger>) -> Result<Self, VsockError> {
        if cid < 3 || cid > u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid(cid));
        }
        let metrics = Arc::new(M::default());
        let muxer = HybridVsockMuxer::new(uds_path, cid, metrics.clone())?;
        let queue_evts = QUEUE_SIZES
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(VsockError::EventFd))
            .collect::<Result<_, _>>()?;
        let timer = TimerFd::new().map_err(|e| VsockError::TimerFd(std::io::Error::from_raw_os_error(e.errno())))?;
        Ok(Vsock {
            cid,
            config: cid.to_le_bytes(),
            queue_evts,
            interrupt,
            muxer,
            metrics,
            active: None,
            tx_paused: false,
            scratch: Vec::new(),
            tx_used: Vec::with_capacity(TX_USED_BATCH),
            timer,
            timer_armed: false,
            reset_unseen: None,
        })
    }

    /// The device's counters.
    pub fn metrics(&self) -> Arc<M> {
        self.metrics.clone()
    }

    /// Drops every connection and removes the listening socket (VMM exit).
    pub fn close_backend(&mut self) {
        self.muxer.close();
    }

    /// Whether the driver has set the device up.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn signal_used(&self) {
        M::inc(&self.metrics.interrupts);
        if let Err(e) = self.interrupt.trigger(INT_VRING) {
            tracing::error!(error = %e, "vsock: cannot raise the interrupt");
        }
    }

    /// Whether the guest has taken the last transport reset (or gave up
    /// waiting for it); if not, the timer looks again.
    fn reset_taken(&mut self) -> bool {
        let Some((avail_then, since)) = self.reset_unseen else { return true };
        let Some(active) = self.active.as_ref() else { return true };
        let now = active.queues[EVQ].avail_idx(&active.mem, std::sync::atomic::Ordering::Acquire).ok();
        let timed_out = since.elapsed() >= RESET_ACK_TIMEOUT;
        if now.is_some_and(|idx| idx != avail_then) || timed_out {
            if timed_out {
                tracing::warn!("vsock: the guest did not refill its event buffer after the transport reset; going on");
            }
            self.reset_unseen = None;
            return true;
        }
        self.arm_timer();
        false
    }

    fn arm_timer(&mut self) {
        if !self.timer_armed {
            match self.timer.reset(TX_USED_DELAY, None) {
                Ok(()) => self.timer_armed = true,
                // Without the timer the work waits for the next event.
                Err(e) => tracing::warn!(error = %e, "vsock: cannot arm the device timer"),
            }
        }
    }

    /// Moves packets the muxer has for the guest into RX buffers.
    pub fn process_rx(&mut self) {
        if !self.reset_taken() {
            return;
        }
        let Some(active) = self.active.as_mut() else { return };
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ];
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = crate::devices::virtio::next_chain(queue, mem, &self.metrics.bad_descriptors) else {
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffer::new(mem, chain) {
                Ok(buffer) => {
                    let room = buffer.data_room();
                    if self.scratch.len() < room {
                        self.scratch.resize(room, 0);
                    }
                    let scratch = &mut self.scratch[..room];
                    match self.muxer.recv_pkt(scratch_slice(scratch).as_ref()) {
                        Some(header) => buffer.fill(&header, scratch),
                        None if room == 0 && self.muxer.has_pending_rx() => {
                            // Only payload is waiting and this chain has no
                            // room for any: a driver bug. Use it up (empty)
                            // rather than offer it again forever.
                            tracing::debug!("vsock: RX chain without room for payload");
                            M::inc(&self.metrics.bad_descriptors);
                            0
                        }
                        None => {
                            // Nothing to send after all: give the buffer back.
                            queue.go_to_previous_position();
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "vsock: bad RX descriptor chain");
                    M::inc(&self.metrics.bad_descriptors);
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                tracing::warn!(error = %e, "vsock: cannot return an RX buffer");
                break;
            }
            used = true;
        }
        if used && queue.needs_notification(mem).unwrap_or(true) {
            self.signal_used();
        }
        if self.tx_paused && !self.muxer.rx_backlogged() {
            self.tx_paused = false;
            self.process_tx();
        }
    }

    /// Tells the guest that every connection is gone
    /// (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET on the event queue): after a
    /// restore the host ends of its connections no longer exist. Listening
    /// sockets survive; the guest driver also re-reads the CID.
    pub fn send_transport_reset(&mut self) {
        let Some(active) = self.active.as_mut() else { return };
        let mem = &active.mem;
        let queue = &mut active.queues[EVQ];
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            tracing::warn!("vsock: no event buffer for the transport reset; guest connections may hang");
            return;
        };
        let head = chain.head_index();
        let mut written = 0;
        for desc in chain {
            if desc.is_write_only() && desc.len() >= 4 {
                // struct virtio_vsock_event { le32 id }, id 0 = TRANSPORT_RESET.
                if vm_memory::Bytes::write_obj(mem, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le(), desc.addr()).is_ok() {
                    written = 4;
                }
                break;
            }
        }
        if written == 0 {
            M::inc(&self.metrics.bad_descriptors);
        }
        if let Err(e) = queue.add_used(mem, head, written) {
            tracing::warn!(error = %e, "vsock: cannot return the event buffer");
            return;
        }
        if written != 0 {
            if let Ok(idx) = queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
                self.reset_unseen = Some((idx, std::time::Instant::now()));
            }
        }
        tracing::info!("vsock: sent the guest a transport reset");
        self.signal_used();
    }

    /// Handles what the host side has for the guest: accepted and readable
    /// host connections, handshake timeouts (the muxer's epoll).
    pub fn process_backend(&mut self) {
        self.muxer.process_events();
        self.process_rx();
    }

    /// Hands the guest's packets to the muxer.
    pub fn process_tx(&mut self) {
        loop {
            if self.muxer.rx_backlogged() {
                // Replies would pile up: wait until the guest takes them.
                self.tx_paused = true;
                break;
            }
            let Some(active) = self.active.as_mut() else { return };
            let mem = &active.mem;
            let queue = &mut active.queues[TXQ];
            let Some(chain) = crate::devices::virtio::next_chain(queue, mem, &self.metrics.bad_descriptors) else {
                break;
            };
            let head = chain.head_index();
            match read_tx(mem, chain, &mut self.scratch) {
                Ok(header) => self.muxer.send_pkt(&header, scratch_slice(&mut self.scratch).as_ref()),
                Err(e) => {
                    tracing::debug!(error = %e, "vsock: bad TX descriptor chain");
                    M::inc(&self.metrics.bad_descriptors);
                }
            }
            self.tx_used.push(head);
            if self.tx_used.len() >= TX_USED_BATCH {
                self.return_tx_used();
            }
        }
        if !self.tx_used.is_empty() {
            self.arm_timer();
        }
    }

    /// The device timer fired: returns the TX buffers held back, and looks
    /// again whether RX may go on after a transport reset.
    pub(super) fn timer_fired(&mut self) {
        if !self.timer_armed {
            // Not ours to read: the read below would block on an idle timer.
            return;
        }
        // Never disarmed once armed, so it has expired: this read returns.
        let _ = self.timer.wait();
        self.timer_armed = false;
        self.return_tx_used();
        if self.reset_unseen.is_some() {
            self.process_rx();
        }
    }

    /// Returns the consumed TX buffers to the guest, with one interrupt if
    /// the driver asked for one.
    fn return_tx_used(&mut self) {
        if self.tx_used.is_empty() {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            self.tx_used.clear();
            return;
        };
        let queue = &mut active.queues[TXQ];
        for head in self.tx_used.drain(..) {
            if let Err(e) = queue.add_used(&active.mem, head, 0) {
                tracing::warn!(error = %e, "vsock: cannot return a TX buffer");
            }
        }
        if queue.needs_notification(&active.mem).unwrap_or(true) {
            self.signal_used();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
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
        // The configuration (guest CID) is read-only.
        M::inc(&self.metrics.protocol_errors);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError(format!("vsock needs 3 queues, got {}", ctx.queues.len())));
        }
        self.active = Some(Active { mem: ctx.mem, queues: ctx.queues });
        self.muxer.set_active(true);
        tracing::debug!(cid = self.cid, "vsock device activated");
        // Kicks that arrived before activation were dropped: look now.
        self.process_tx();
        self.process_rx();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.tx_paused = false;
        self.tx_used.clear();
        self.reset_unseen = None;
        self.muxer.set_active(false);
    }

    fn quiesce(&mut self) -> Result<Vec<QueueState>, String> {
        // The queues are only processed on the VMM thread, which is the
        // one taking the snapshot: nothing runs concurrently. Buffers held
        // for a batch go back first, or the saved queue would lose them.
        self.return_tx_used();
        let active = self.active.as_ref().ok_or("vsock is not active")?;
        Ok(active.queues.iter().map(|q| q.state()).collect())
    }

    fn restored(&mut self) {
        self.send_transport_reset();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
