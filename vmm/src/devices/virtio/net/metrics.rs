//! Counters of the virtio-net device, logged when the VMM exits.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl NetMetrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// All counters as `name=value` pairs, for logs.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "rx_frames={} rx_bytes={} rx_dropped={} tx_frames={} tx_bytes={} tx_dropped={} bad_descriptors={} tap_errors={}",
            get(&self.rx_frames),
            get(&self.rx_bytes),
            get(&self.rx_dropped),
            get(&self.tx_frames),
            get(&self.tx_bytes),
            get(&self.tx_dropped),
            get(&self.bad_descriptors),
            get(&self.tap_errors),
        )
    }
}
