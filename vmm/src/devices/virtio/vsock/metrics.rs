//! Counters of the vsock device, logged when the VMM exits.

use std::sync::atomic::{AtomicU64, Ordering};

/// Event counters; all monotonically increasing.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Packets taken from the TX queue.
    pub tx_packets: AtomicU64,
    /// Payload bytes taken from the TX queue.
    pub tx_bytes: AtomicU64,
    /// Packets put on the RX queue.
    pub rx_packets: AtomicU64,
    /// Payload bytes put on the RX queue.
    pub rx_bytes: AtomicU64,
    /// Connections established (both directions).
    pub conns_added: AtomicU64,
    /// Connections removed.
    pub conns_removed: AtomicU64,
    /// Host connections or guest requests refused.
    pub conns_refused: AtomicU64,
    /// RST packets sent to the guest.
    pub rst_sent: AtomicU64,
    /// Descriptor chains that were not valid packets.
    pub bad_descriptors: AtomicU64,
    /// Packets that broke the protocol (wrong CID or type, credit overrun,
    /// unexpected op); each resets its connection.
    pub protocol_errors: AtomicU64,
}

impl VsockMetrics {
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
            "tx_packets={} tx_bytes={} rx_packets={} rx_bytes={} conns_added={} conns_removed={} conns_refused={} rst_sent={} bad_descriptors={} protocol_errors={}",
            get(&self.tx_packets),
            get(&self.tx_bytes),
            get(&self.rx_packets),
            get(&self.rx_bytes),
            get(&self.conns_added),
            get(&self.conns_removed),
            get(&self.conns_refused),
            get(&self.rst_sent),
            get(&self.bad_descriptors),
            get(&self.protocol_errors),
        )
    }
}
