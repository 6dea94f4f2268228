//! Counters of the vsock device, logged when the VMM exits.

use std::sync::atomic::AtomicU64;

use crate::devices::virtio::Counters;

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
    /// Guest notifications (kicks) on the TX queue.
    pub tx_kicks: AtomicU64,
    /// Interrupts raised (used buffers on any queue).
    pub interrupts: AtomicU64,
    /// Packets that broke the protocol (wrong CID or type, credit overrun,
    /// unexpected op); each resets its connection.
    pub protocol_errors: AtomicU64,
}

impl Counters for VsockMetrics {}

impl VsockMetrics {
    /// All counters as `name=value` pairs, for logs.
    pub fn summary(&self) -> String {
        Self::render(&[
            ("tx_packets", &self.tx_packets),
            ("tx_bytes", &self.tx_bytes),
            ("rx_packets", &self.rx_packets),
            ("rx_bytes", &self.rx_bytes),
            ("conns_added", &self.conns_added),
            ("conns_removed", &self.conns_removed),
            ("conns_refused", &self.conns_refused),
            ("rst_sent", &self.rst_sent),
            ("tx_kicks", &self.tx_kicks),
            ("interrupts", &self.interrupts),
            ("bad_descriptors", &self.bad_descriptors),
            ("protocol_errors", &self.protocol_errors),
        ])
    }
}
