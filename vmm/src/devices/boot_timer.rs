//! The boot-timer device (Firecracker's idea): the guest's init writes
//! [`MAGIC`] to this MMIO page once user space runs, and the VMM logs the
//! time since it started. It is the single figure "VMM start to guest init".

use std::time::Duration;

use super::bus::BusDevice;
use crate::clock;

/// The byte the agent writes; must match `kata_like_protocol::BOOT_TIMER_MAGIC`
/// (the VMM does not depend on the agent protocol; the tests crate checks).
pub const MAGIC: u8 = 123;

/// Kernel parameter telling the agent where this device is; must match
/// `kata_like_protocol::BOOT_TIMER_CMDLINE_KEY`.
pub const CMDLINE_KEY: &str = "kata_like_boot_timer";

/// Records the first marker write.
#[derive(Debug, Default)]
pub struct BootTimer {
    fired: Option<Duration>,
}

impl BootTimer {
    /// A timer that has not fired.
    pub fn new() -> Self {
        BootTimer::default()
    }

    /// When the guest wrote the marker, relative to VMM start.
    pub fn fired_at(&self) -> Option<Duration> {
        self.fired
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() != Some(&MAGIC) || self.fired.is_some() {
            return;
        }
        let elapsed = clock::since_start();
        self.fired = Some(elapsed);
        tracing::info!(
            us_since_start = elapsed.as_micros() as u64,
            monotonic_ns = clock::monotonic_ns(),
            "boot-timer: guest init reached user space"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_byte_fires_and_only_once() {
        let mut timer = BootTimer::new();
        timer.write(0, &[1]);
        assert!(timer.fired_at().is_none());
        timer.write(0, &[MAGIC]);
        let first = timer.fired_at().expect("fired");
        std::thread::sleep(Duration::from_millis(2));
        timer.write(0, &[MAGIC]);
        assert_eq!(timer.fired_at(), Some(first));
    }
}
