//! The i8042 keyboard controller, only for its CPU-reset command: the guest
//! kernel (reboot=k) resets through it, and our kernel patch routes power-off
//! there too, so a guest reboot or power-off ends the VMM with status 0.

use vm_superio::I8042Device;

use super::bus::BusDevice;
use super::trigger::EventFdTrigger;

/// The controller on ports 0x60..=0x64.
#[derive(Debug)]
pub struct I8042 {
    device: I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// `reset` is signalled when the guest asks for a CPU reset.
    pub fn new(reset: EventFdTrigger) -> Self {
        I8042 { device: I8042Device::new(reset) }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(first) = data.first_mut() {
            *first = self.device.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(value) = data.first() {
            if let Err(e) = self.device.write(offset as u8, *value) {
                tracing::error!(error = %e, "cannot signal the guest reset");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn reset_command_signals_the_vmm() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut dev = I8042::new(EventFdTrigger::new(evt.try_clone().expect("clone")));
        dev.write(0, &[0xfe]);
        assert!(evt.read().is_err(), "data port writes do nothing");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().expect("reset signalled"), 1);
    }
}
