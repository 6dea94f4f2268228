//! Counters of the balloon, logged when the VMM exits.

use std::sync::atomic::AtomicU64;

use crate::devices::virtio::Counters;

/// Event counters; all monotonically increasing.
#[derive(Debug, Default)]
pub struct BalloonMetrics {
    /// Free page reports handled (one chain each).
    pub reports: AtomicU64,
    /// Bytes reported free and given back to the host.
    pub reported_bytes: AtomicU64,
    /// Pages the guest put in the balloon (given back too).
    pub inflated_pages: AtomicU64,
    /// Pages the guest took out of the balloon.
    pub deflated_pages: AtomicU64,
    /// Malformed chains or ranges outside guest RAM, returned unused.
    pub bad_descriptors: AtomicU64,
    /// Interrupts raised.
    pub interrupts: AtomicU64,
}

impl Counters for BalloonMetrics {}

impl BalloonMetrics {
    /// All counters as `name=value` pairs, for logs.
    pub fn summary(&self) -> String {
        Self::render(&[
            ("reports", &self.reports),
            ("reported_bytes", &self.reported_bytes),
            ("inflated_pages", &self.inflated_pages),
            ("deflated_pages", &self.deflated_pages),
            ("bad_descriptors", &self.bad_descriptors),
            ("interrupts", &self.interrupts),
        ])
    }
}
