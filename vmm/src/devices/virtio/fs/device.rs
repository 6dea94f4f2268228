//! The virtio-fs device: guest-facing registers here, file system work in
//! virtiofsd, connected over vhost-user with the `vhost` crate's frontend.

use crate::devices::virtio::Counters;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{QueueState, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::metrics::FsMetrics;
use super::{TAG_LEN, TYPE_FS};
use crate::devices::virtio::{
    read_config_bytes, ActivateContext, ActivateError, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};

/// The high-priority queue plus one request queue.
pub const NUM_QUEUES: usize = 2;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 512;
/// Feature bit of vhost-user itself (not a virtio feature the guest sees).
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// virtio ring feature: indirect descriptors.
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// The virtio features we pass through from virtiofsd: the transport
/// implements these, and virtio-fs' notification queue is not offered.
const PASSTHROUGH_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC;
/// The vhost-user protocol features we use when virtiofsd offers them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
}

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
    /// An eventfd could not be created.
    #[error("virtio-fs: eventfd: {0}")]
    EventFd(std::io::Error),
}

/// One virtio-fs device backed by one virtiofsd.
pub struct Fs {
    socket: PathBuf,
    frontend: Frontend,
    backend_features: u64,
    protocol_features: Option<VhostUserProtocolFeatures>,
    config: Vec<u8>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    interrupt: Arc<IrqTrigger>,
    metrics: FsMetrics,
    /// What the rings were started with (memory, queues, features) while
    /// the device is active; kept to restart them after a snapshot.
    started: Option<ActivateContext>,
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
            (0..NUM_QUEUES).map(|_| EventFd::new(libc::EFD_NONBLOCK).map_err(FsError::EventFd)).collect()
        };
        tracing::info!(socket = %socket.display(), tag, features = format_args!("{backend_features:#x}"), "virtio-fs: connected to virtiofsd");
        Ok(Fs {
            socket: socket.to_path_buf(),
            frontend,
            backend_features,
            protocol_features,
            config,
            kicks: eventfds()?,
            calls: eventfds()?,
            interrupt,
            metrics: FsMetrics::default(),
            started: None,
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

    /// Hands guest memory and the driver's queues to virtiofsd.
    fn start_backend(&mut self, ctx: &ActivateContext) -> Result<(), String> {
        let mem = &ctx.mem;
        let vhost = |step: &'static str| move |e: vhost::Error| format!("{step}: {e}");
        let mut features = ctx.acked_features & self.backend_features;
        if self.protocol_features.is_some() {
            features |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        self.frontend.set_features(features).map_err(vhost("SET_FEATURES"))?;

        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("guest RAM is not shareable (no memfd backing): {e}"))?;
        self.frontend.set_mem_table(&regions).map_err(vhost("SET_MEM_TABLE"))?;

        for (index, queue) in ctx.queues.iter().enumerate() {
            if !queue.ready() {
                continue;
            }
            // The guest chose these addresses: is_valid checks every ring
            // lies inside guest RAM before we hand them to virtiofsd.
            if !queue.is_valid(mem) {
                return Err(format!("queue {index}: rings outside guest RAM or bad size"));
            }
            let host = |addr: u64| -> Result<u64, String> {
                mem.get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|e| format!("queue {index}: ring address {addr:#x}: {e}"))
            };
            let config = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host(queue.desc_table())?,
                used_ring_addr: host(queue.used_ring())?,
                avail_ring_addr: host(queue.avail_ring())?,
                log_addr: None,
            };
            self.frontend.set_vring_num(index, queue.size()).map_err(vhost("SET_VRING_NUM"))?;
            self.frontend.set_vring_addr(index, &config).map_err(vhost("SET_VRING_ADDR"))?;
            // 0 on a fresh start; the saved position after a snapshot.
            let base = queue.next_avail();
            self.frontend.set_vring_base(index, base).map_err(vhost("SET_VRING_BASE"))?;
            self.frontend.set_vring_call(index, &self.calls[index]).map_err(vhost("SET_VRING_CALL"))?;
            self.frontend.set_vring_kick(index, &self.kicks[index]).map_err(vhost("SET_VRING_KICK"))?;
            if self.protocol_features.is_some() {
                self.frontend.set_vring_enable(index, true).map_err(vhost("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn avail_features(&self) -> u64 {
        self.backend_features & PASSTHROUGH_FEATURES
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
        self.start_backend(&ctx).map_err(|e| {
            FsMetrics::inc(&self.metrics.backend_errors);
            ActivateError(format!("virtio-fs ({}): {e}", self.socket.display()))
        })?;
        self.started = Some(ctx);
        Ok(())
    }

    fn reset(&mut self) {
        if self.started.is_none() {
            return;
        }
        // Stop the rings in virtiofsd; a later activation sets them up again.
        for index in 0..NUM_QUEUES {
            if self.protocol_features.is_some() {
                let _ = self.frontend.set_vring_enable(index, false);
            }
            if let Err(e) = self.frontend.get_vring_base(index) {
                FsMetrics::inc(&self.metrics.backend_errors);
                tracing::warn!(index, error = %e, "virtio-fs: cannot stop a ring in virtiofsd");
            }
        }
        self.started = None;
    }

    fn quiesce(&mut self) -> Result<Vec<QueueState>, String> {
        // The rings live in virtiofsd: GET_VRING_BASE stops each one and
        // returns where virtiofsd would read next. virtiofsd completes a
        // request before taking the next, so used == avail there.
        let Fs { started, frontend, protocol_features, socket, .. } = self;
        let started = started.as_mut().ok_or("virtio-fs is not active")?;
        for (index, queue) in started.queues.iter_mut().enumerate() {
            if !queue.ready() {
                continue;
            }
            if protocol_features.is_some() {
                let _ = frontend.set_vring_enable(index, false);
            }
            let base = frontend
                .get_vring_base(index)
                .map_err(|e| format!("virtio-fs ({}): GET_VRING_BASE {index}: {e}", socket.display()))?;
            let base = u16::try_from(base).map_err(|_| format!("virtiofsd returned ring base {base}"))?;
            queue.set_next_avail(base);
            queue.set_next_used(base);
        }
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
        // GET_VRING_BASE stopped the rings: start them again where they are.
        let Some(started) = self.started.take() else { return Ok(()) };
        let result = self.start_backend(&started);
        self.started = Some(started);
        result.map_err(|e| format!("virtio-fs ({}): {e}", self.socket.display()))
    }
}
