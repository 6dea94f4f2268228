//! Counters of a virtio-fs device, logged when the VMM exits.

use std::sync::atomic::{AtomicU64, Ordering};

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

impl FsMetrics {
    /// Adds one to `counter`.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// All counters as `name=value` pairs, for logs.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "interrupts={} activations={} backend_errors={}",
            get(&self.interrupts),
            get(&self.activations),
            get(&self.backend_errors)
        )
    }
}
