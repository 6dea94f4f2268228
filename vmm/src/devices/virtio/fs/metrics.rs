//! Counters of a virtio-fs device, logged when the VMM exits.

use std::sync::atomic::AtomicU64;

use crate::devices::virtio::Counters;

/// Event counters; all monotonically increasing.
#[derive(Debug, Default)]
pub struct FsMetrics {
    /// Interrupts raised for virtiofsd's used-buffer notifications.
    pub interrupts: AtomicU64,
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
            ("activations", &self.activations),
            ("backend_errors", &self.backend_errors),
        ])
    }
}
