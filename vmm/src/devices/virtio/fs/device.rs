//! The virtio-fs device: guest-facing registers and queues here, file
//! system work in virtiofsd, connected over vhost-user with the `vhost`
//! crate's frontend. virtiofsd serves the shadow rings ([`super::shadow`]);
//! [`super::relay`] moves requests and replies between them and the guest's.

use crate::devices::virtio::Counters;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueState;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::FsMetrics;
use super::relay::Relay;
use super::shadow::RING_SIZE;
use super::{TAG_LEN, TYPE_FS};
use crate::devices::virtio::{
    read_config_bytes, ActivateContext, ActivateError, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// The high-priority queue plus one request queue.
pub const NUM_QUEUES: usize = 2;
/// Size of each queue the guest sees.
pub const QUEUE_SIZE: u16 = 512;
/// Feature bit of vhost-user itself (not a virtio feature the guest sees).
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// virtio ring feature: indirect descriptors.
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// What the guest is offered: the guest's rings are ours (virtio-queue
/// reads indirect descriptors and keeps the event indexes), so these do not
/// depend on virtiofsd; virtio-fs' notification queue is not offered.
const GUEST_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;
/// The vhost-user protocol features we use when virtiofsd offers them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}
/// How long a snapshot waits for virtiofsd to finish the requests it has.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors creating a virtio-fs device. Each names the socket and the step.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or too long.
    #[error("virtio-fs tag {0:?} must be 1 to {TAG_LEN} bytes")]
    Tag(String),
    /// virtiofsd is not there or refused the handshake.
    #[error("virtio-fs: cannot {step} virtiofsd at {}: {source} (is virtiofsd running with --socket-path on it?)", socket.display())]
    Backend {
        /// The vhost-user socket.
        socket: PathBuf,
        /// What we were doing.
        step: &'static str,
        /// The vhost-user error.
        source: vhost::Error,
    },
    /// virtiofsd lacks a feature we need.
    #[error("virtio-fs: virtiofsd at {} does not offer VIRTIO_F_VERSION_1", socket.display())]
    Features {
        /// The vhost-user socket.
        socket: PathBuf,
    },
    /// An eventfd or the shadow rings' memory could not be created.
    #[error("virtio-fs: {0}")]
    Resource(std::io::Error),
}

/// One virtio-fs device backed by one virtiofsd.
pub struct Fs {
    socket: PathBuf,
    frontend: Frontend,
    protocol_features: Option<VhostUserProtocolFeatures>,
    config: Vec<u8>,
    /// Guest notifications (KVM ioeventfds), one per queue.
    pub(super) kicks: Vec<EventFd>,
    /// Our notifications to virtiofsd, one per shadow ring.
    backend_kicks: Vec<EventFd>,
    /// virtiofsd's used-buffer notifications, one per shadow ring.
    pub(super) calls: Vec<EventFd>,
    interrupt: Arc<IrqTrigger>,
    metrics: FsMetrics,
    /// What the guest activated the device with (memory, its queues,
    /// features) while it is active.
    started: Option<ActivateContext>,
    /// The shadow rings and the requests at virtiofsd.
    relay: Relay,
    /// Between a snapshot's quiesce and resume: nothing goes to virtiofsd.
    quiesced: bool,
    drain_timeout: Duration,
    log_budget: crate::devices::virtio::GuestLogBudget,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs").field("socket", &self.socket).field("active", &self.started.is_some()).finish()
    }
}

impl Fs {
    /// Connects to virtiofsd on `socket` and exposes its export as `tag`.
    pub fn new(tag: &str, socket: &Path, interrupt: Arc<IrqTrigger>) -> Result<Fs, FsError> {
        let frontend = Frontend::connect(socket, NUM_QUEUES as u64).map_err(|source| FsError::Backend {
            socket: socket.to_path_buf(),
            step: "connect to",
            source,
        })?;
        Self::with_frontend(tag, socket, frontend, interrupt)
    }

    /// The handshake with an already connected vhost-user backend
    /// (`socket` names it in errors). What the backend answers is checked
    /// like anything else from outside the VMM: the fuzz target
    /// `fs_vhost_user` (`crate::fuzz`) answers with arbitrary bytes.
    pub(crate) fn with_frontend(
        tag: &str,
        socket: &Path,
        mut frontend: Frontend,
        interrupt: Arc<IrqTrigger>,
    ) -> Result<Fs, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::Tag(tag.to_string()));
        }
        let err = |step: &'static str| {
            let socket = socket.to_path_buf();
            move |source| FsError::Backend { socket, step, source }
        };
        frontend.set_owner().map_err(err("set the owner of"))?;
        let backend_features = frontend.get_features().map_err(err("get the features of"))?;
        if backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FsError::Features { socket: socket.to_path_buf() });
        }
        let protocol_features = if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = frontend.get_protocol_features().map_err(err("get the protocol features of"))?;
            let chosen = offered & wanted_protocol_features();
            frontend.set_protocol_features(chosen).map_err(err("set the protocol features of"))?;
            Some(chosen)
        } else {
            None
        };

        let mut config = vec![0u8; TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes()); // num_request_queues
        let eventfds = || -> Result<Vec<EventFd>, FsError> {
            (0..NUM_QUEUES).map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::Resource)).collect()
        };
        tracing::info!(socket = %socket.display(), tag, features = format_args!("{backend_features:#x}"), "virtio-fs: connected to virtiofsd");
        Ok(Fs {
            socket: socket.to_path_buf(),
            frontend,
            protocol_features,
            config,
            kicks: eventfds()?,
            backend_kicks: eventfds()?,
            calls: eventfds()?,
            interrupt,
            metrics: FsMetrics::default(),
            started: None,
            relay: Relay::new(NUM_QUEUES).map_err(FsError::Resource)?,
            quiesced: false,
            drain_timeout: DRAIN_TIMEOUT,
            log_budget: Default::default(),
        })
    }

    /// The eventfds virtiofsd signals used buffers on, one per queue.
    pub fn call_events(&self) -> &[EventFd] {
        &self.calls
    }

    /// The device's interrupt.
    pub fn interrupt(&self) -> &IrqTrigger {
        &self.interrupt
    }

    /// The device's counters.
    pub fn metrics(&self) -> &FsMetrics {
        &self.metrics
    }

    /// How long a snapshot waits for virtiofsd's requests (the fuzz
    /// target's backend never answers).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn set_drain_timeout(&mut self, timeout: Duration) {
        self.drain_timeout = timeout;
    }

    /// Hands the shadow rings to virtiofsd and starts them where they are.
    fn start_backend(&mut self) -> Result<(), String> {
        let vhost = |step: &'static str| move |e: vhost::Error| format!("{step}: {e}");
        let mut features = VIRTIO_F_VERSION_1;
        if self.protocol_features.is_some() {
            features |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        self.frontend.set_features(features).map_err(vhost("SET_FEATURES"))?;
        let mem = self.relay.rings().mem();
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the shadow rings are not shareable: {e}"))?;
        self.frontend.set_mem_table(&regions).map_err(vhost("SET_MEM_TABLE"))?;
        for index in 0..NUM_QUEUES {
            let host = |addr: u64| -> Result<u64, String> {
                mem.get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|e| format!("shadow ring {index}: address {addr:#x}: {e}"))
            };
            let (desc, avail, used) = self.relay.rings().ring_addrs(index);
            let config = VringConfigData {
                queue_max_size: RING_SIZE,
                queue_size: RING_SIZE,
                flags: 0,
                desc_table_addr: host(desc)?,
                used_ring_addr: host(used)?,
                avail_ring_addr: host(avail)?,
                log_addr: None,
            };
            self.frontend.set_vring_num(index, RING_SIZE).map_err(vhost("SET_VRING_NUM"))?;
            self.frontend.set_vring_addr(index, &config).map_err(vhost("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(index, self.relay.rings().next_avail(index))
                .map_err(vhost("SET_VRING_BASE"))?;
            self.frontend.set_vring_call(index, &self.calls[index]).map_err(vhost("SET_VRING_CALL"))?;
            self.frontend.set_vring_kick(index, &self.backend_kicks[index]).map_err(vhost("SET_VRING_KICK"))?;
            if self.protocol_features.is_some() {
                self.frontend.set_vring_enable(index, true).map_err(vhost("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    /// Stops the shadow rings in virtiofsd (GET_VRING_BASE): the position
    /// it would read next, per ring.
    fn stop_backend(&mut self) -> Result<Vec<u32>, String> {
        (0..NUM_QUEUES)
            .map(|index| {
                if self.protocol_features.is_some() {
                    let _ = self.frontend.set_vring_enable(index, false);
                }
                self.frontend.get_vring_base(index).map_err(|e| format!("GET_VRING_BASE {index}: {e}"))
            })
            .collect()
    }

    /// Waits until virtiofsd has answered every request it has (a
    /// snapshot's quiesce), passing the answers on.
    fn drain(&mut self) -> Result<(), String> {
        let deadline = std::time::Instant::now() + self.drain_timeout;
        loop {
            for queue in 0..NUM_QUEUES {
                let _ = self.calls[queue].read();
                self.process_replies(queue);
            }
            let left = self.relay.in_flight();
            if left == 0 {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("virtiofsd did not answer {left} requests within {:?}", self.drain_timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Forwards the requests the guest made available on `queue`.
    pub fn process_requests(&mut self, queue: usize) {
        if self.quiesced {
            return;
        }
        let Some(started) = self.started.as_mut() else { return };
        let Some(kick) = self.backend_kicks.get(queue) else { return };
        self.relay.process_requests(queue, started, &self.metrics, kick, &self.interrupt);
    }

    /// Passes virtiofsd's replies on `queue` back to the guest, then the
    /// requests that waited for room.
    pub fn process_replies(&mut self, queue: usize) {
        if self.relay.process_replies(queue, self.started.as_mut(), &self.metrics, &self.interrupt) {
            self.process_requests(queue);
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn avail_features(&self) -> u64 {
        GUEST_FEATURES
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.kicks
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The configuration space is read-only (virtio 1.2, 5.11.4).
        if self.log_budget.allow() {
            tracing::warn!(offset, len = data.len(), "virtio-fs: guest wrote the read-only config space; ignored");
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        FsMetrics::inc(&self.metrics.activations);
        self.relay.forget();
        self.start_backend().map_err(|e| {
            FsMetrics::inc(&self.metrics.backend_errors);
            ActivateError(format!("virtio-fs ({}): {e}", self.socket.display()))
        })?;
        self.started = Some(ctx);
        self.quiesced = false;
        Ok(())
    }

    fn reset(&mut self) {
        if self.started.take().is_none() {
            return;
        }
        // Stop the rings in virtiofsd; a later activation sets them up again.
        if let Err(e) = self.stop_backend() {
            FsMetrics::inc(&self.metrics.backend_errors);
            tracing::warn!(error = %e, "virtio-fs: cannot stop the rings in virtiofsd");
        }
        self.relay.forget();
    }

    fn quiesce(&mut self) -> Result<Vec<QueueState>, String> {
        // virtiofsd answers what it has, then GET_VRING_BASE stops its
        // rings. The guest's rings are ours: their positions are the state.
        if self.started.is_none() {
            return Err("virtio-fs is not active".into());
        }
        self.quiesced = true;
        let socket = self.socket.display().to_string();
        self.drain().map_err(|e| format!("virtio-fs ({socket}): {e}"))?;
        self.stop_backend().map_err(|e| format!("virtio-fs ({socket}): {e}"))?;
        let started = self.started.as_ref().ok_or("virtio-fs is not active")?;
        Ok(started.queues.iter().map(|q| q.state()).collect())
    }

    fn check_restorable(&self, device_queues: &[QueueState]) -> Result<(), String> {
        // Requests on a ring mean the guest has a FUSE session (it mounted
        // the tag): the new virtiofsd never saw its FUSE_INIT or its inodes.
        if device_queues.iter().any(|q| q.next_avail != 0) {
            return Err(format!(
                "the snapshot's guest had virtio-fs tag {:?} mounted; its FUSE session cannot move to a new virtiofsd (snapshot before mounting)",
                String::from_utf8_lossy(&self.config[..TAG_LEN]).trim_end_matches('\0')
            ));
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<(), String> {
        if self.started.is_none() {
            return Ok(());
        }
        // GET_VRING_BASE stopped the rings: start them again where they are.
        let result = self.start_backend().map_err(|e| format!("virtio-fs ({}): {e}", self.socket.display()));
        self.quiesced = false;
        for queue in 0..NUM_QUEUES {
            self.process_requests(queue);
        }
        result
    }
}
