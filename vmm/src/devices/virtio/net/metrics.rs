//! Counters of the virtio-net device, logged when the VMM exits.

use std::sync::atomic::AtomicU64;

use crate::devices::virtio::Counters;

/// Event counters; all monotonically increasing.
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames put on the RX queue (host → guest).
    pub rx_frames: AtomicU64,
    /// Bytes of those frames, virtio-net headers excluded.
    pub rx_bytes: AtomicU64,
    /// Frames read from the tap but not delivered (larger than the guest's
    /// buffer, or shorter than a header).
    pub rx_dropped: AtomicU64,
    /// Frames taken from the TX queue and written to the tap.
    pub tx_frames: AtomicU64,
    /// Bytes of those frames, virtio-net headers excluded.
    pub tx_bytes: AtomicU64,
    /// Frames the tap refused (queue full, interface down).
    pub tx_dropped: AtomicU64,
    /// Descriptor chains that were not valid buffers (bad addresses, too
    /// short, too long); each is returned to the guest unused.
    pub bad_descriptors: AtomicU64,
    /// Unexpected tap read errors.
    pub tap_errors: AtomicU64,
    /// Driver writes to the read-only configuration space, ignored.
    pub config_writes: AtomicU64,
}

impl Counters for NetMetrics {}

impl NetMetrics {
    /// All counters as `name=value` pairs, for logs.
    pub fn summary(&self) -> String {
        Self::render(&[
            ("rx_frames", &self.rx_frames),
            ("rx_bytes", &self.rx_bytes),
            ("rx_dropped", &self.rx_dropped),
            ("tx_frames", &self.tx_frames),
            ("tx_bytes", &self.tx_bytes),
            ("tx_dropped", &self.tx_dropped),
            ("bad_descriptors", &self.bad_descriptors),
            ("tap_errors", &self.tap_errors),
            ("config_writes", &self.config_writes),
        ])
    }
}
