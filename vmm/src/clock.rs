//! Timestamps for boot-time measurements.
//!
//! `mark_start` is called first thing in `main`; events are logged both as
//! microseconds since then and as absolute CLOCK_MONOTONIC nanoseconds, so a
//! harness that records the monotonic time before spawning the VMM can also
//! measure exec and dynamic loading.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static START: OnceLock<Instant> = OnceLock::new();

/// Records the VMM's start instant (idempotent).
pub fn mark_start() {
    START.get_or_init(Instant::now);
}

/// Time since [`mark_start`] (or since the first call, if never marked).
pub fn since_start() -> Duration {
    START.get_or_init(Instant::now).elapsed()
}

/// Absolute CLOCK_MONOTONIC time in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC
    // is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
