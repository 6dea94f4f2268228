//! VM snapshots: a paused VM written to a directory and restored into a
//! new VMM process.
//!
//! A snapshot directory holds two files:
//! * `state`: everything but RAM ([`VmState`]) in a versioned, checksummed
//!   envelope ([`format`]);
//! * `memory`: guest RAM, sparse: only pages the guest touched and that
//!   are not all zeros hold data ([`memory`]). Its CRC32 (in `state`) is
//!   checked on a thread beside the restore, before any vCPU runs
//!   (`--skip-snapshot-check` leaves it out, for benchmarks only).
//!
//! Restoring maps `memory` MAP_PRIVATE into the new VM, so any number of
//! VMs restored from one snapshot share its page cache until they write; a
//! VM with a vhost-user device (virtio-fs) must share its RAM with
//! virtiofsd instead, so its RAM is a memfd into which the snapshot's data
//! extents are copied (see [`memory`]).
//!
//! What is in a snapshot, and what a restore does with it:
//! * vCPUs ([`kvm::save_vcpu`]): registers, special registers, XSAVE area,
//!   XCRs, debug registers, LAPIC, MSRs, pending events, MP state, CPUID.
//! * The VM ([`kvm::VmKvmState`]): PIC, IO-APIC, PIT, kvmclock.
//! * Devices: the UART's registers; each virtio-mmio transport's register
//!   file with its queues, and the device-side queue positions. vsock
//!   connections are not kept: the restored device sends the guest a
//!   transport reset, which closes every connection (listeners stay). A
//!   virtio-fs device reattaches to whichever virtiofsd the restore names,
//!   at the saved ring positions; a FUSE session the guest opened before the
//!   snapshot does not survive (a new virtiofsd never saw its FUSE_INIT), so
//!   templates are taken before anything is mounted. A virtio-net device
//!   reattaches to the tap the restore names.

pub mod format;
pub mod kvm;
pub mod memory;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use kvm::{VcpuState, VmKvmState};

use crate::config::VmConfig;
use crate::devices::serial::SerialSnapshot;

pub use kata_like_vmm_contract::snapshot::{MEMORY_FILE, STATE_FILE};

/// A virtio queue's position and layout (virtio-queue's `QueueState`, which
/// has no serde support).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Maximum size offered by the device.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Whether the driver set the queue ready.
    pub ready: bool,
    /// Next available-ring entry the device will read.
    pub next_avail: u16,
    /// Next used-ring entry the device will write.
    pub next_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
}

impl From<virtio_queue::QueueState> for QueueSnapshot {
    fn from(q: virtio_queue::QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            size: q.size,
            ready: q.ready,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<QueueSnapshot> for virtio_queue::QueueState {
    fn from(q: QueueSnapshot) -> Self {
        virtio_queue::QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// One virtio-mmio transport and its device.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSnapshot {
    /// virtio device type (checked against the restored device).
    pub device_type: u32,
    /// DeviceFeaturesSel.
    pub features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// Features the driver acknowledged.
    pub acked_features: u64,
    /// The driver wrote unoffered features.
    pub bad_features: bool,
    /// QueueSel.
    pub queue_select: u32,
    /// Device status.
    pub status: u32,
    /// Whether the device was activated.
    pub activated: bool,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// The queues as the driver configured them.
    pub queues: Vec<QueueSnapshot>,
    /// The device's own queue positions (activated devices only).
    pub device_queues: Vec<QueueSnapshot>,
}

/// Everything but guest RAM.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    /// The configuration the VM was built from (its device set is what a
    /// restore must provide again).
    pub config: VmConfig,
    /// Guest RAM size in bytes (the length of the memory file).
    pub memory_size: u64,
    /// Checksum of the memory file's data pages.
    pub memory_crc32: u32,
    /// In-kernel interrupt controllers, PIT and clock.
    pub kvm: VmKvmState,
    /// vCPUs in index order.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialSnapshot,
    /// virtio-mmio transports: vsock, then virtio-fs, then virtio-net, in
    /// configuration order.
    pub transports: Vec<TransportSnapshot>,
}

/// Why a snapshot could not be written or read. Each variant names the
/// file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading or writing a snapshot file failed.
    #[error("snapshot {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a kata-like snapshot.
    #[error("snapshot {}: not a kata-like VM snapshot (bad magic)", path.display())]
    NotASnapshot {
        /// The file.
        path: PathBuf,
    },
    /// Written in a format this VMM does not read.
    #[error("snapshot {}: format version {found} (written by kata-like-vmm {writer}); this kata-like-vmm {ours} reads version {expected} only; take a new snapshot", path.display(), ours = env!("CARGO_PKG_VERSION"))]
    Version {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version we read.
        expected: u32,
        /// VMM version that wrote it.
        writer: String,
    },
    /// The file is shorter than its header says.
    #[error("snapshot {}: truncated ({what})", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What is missing.
        what: String,
    },
    /// The checksum does not match.
    #[error("snapshot {}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the file is corrupt", path.display())]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Stored CRC32.
        stored: u32,
        /// Computed CRC32.
        computed: u32,
    },
    /// The payload does not decode, or is inconsistent.
    #[error("snapshot {}: {why}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A KVM ioctl failed while saving or restoring.
    #[error("{what}: {source}")]
    Kvm {
        /// The operation.
        what: String,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// The VM cannot be snapshotted in its current state.
    #[error("cannot snapshot: {0}")]
    State(String),
}

impl SnapshotError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
        move |source| SnapshotError::Io { path: path.to_path_buf(), source }
    }

    pub(crate) fn kvm(what: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> SnapshotError {
        let what = what.into();
        move |source| SnapshotError::Kvm { what, source }
    }
}
