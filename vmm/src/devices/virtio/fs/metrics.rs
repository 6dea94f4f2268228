//! Counters of a virtio-fs device, logged when the VMM exits.

use std::sync::atomic::AtomicU64;

use crate::devices::virtio::Counters;

/// Event counters; all monotonically increasing.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// Interrupts raised for the guest.
    pub interrupts: AtomicU64,
    /// Requests forwarded to virtiofsd.
    pub requests: AtomicU64,
    /// Request bytes copied from guest RAM to the shadow arena.
    pub bytes_to_backend: AtomicU64,
    /// Reply bytes copied from the shadow arena to guest RAM.
    pub bytes_from_backend: AtomicU64,
    /// Malformed guest chains, returned unused.
    pub bad_descriptors: AtomicU64,
    /// Times a request waited for room in the shadow rings.
    pub stalls: AtomicU64,
    /// Activations (driver set DRIVER_OK).
    pub activations: AtomicU64,
    /// Times the vhost-user backend failed or hung up.
    pub backend_errors: AtomicU64,
}

impl Counters for FsMetrics {}

impl FsMetrics {
    /// All counters as `name=value` pairs, for logs.
    pub fn summary(&self) -> String {
        Self::render(&[
            ("interrupts", &self.interrupts),
            ("requests", &self.requests),
            ("bytes_to_backend", &self.bytes_to_backend),
            ("bytes_from_backend", &self.bytes_from_backend),
            ("bad_descriptors", &self.bad_descriptors),
            ("stalls", &self.stalls),
            ("activations", &self.activations),
            ("backend_errors", &self.backend_errors),
        ])
    }
}
