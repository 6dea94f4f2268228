//! The balloon under a hostile guest: inflate/deflate PFN arrays and free
//! page reports naming any ranges, with snapshot-style quiesces.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::guest::HostileDriver;
use super::Input;
use crate::devices::bus::lock;
use crate::devices::virtio::balloon::device::{DEFLATE, INFLATE, REPORTING};
use crate::devices::virtio::balloon::Balloon;
use crate::devices::virtio::{IrqTrigger, VirtioDevice};

/// A hostile guest drives the balloon's three queues.
pub fn balloon_guest(data: &[u8]) {
    let Ok(irqfd) = EventFd::new(libc::EFD_NONBLOCK) else { return };
    let interrupt = Arc::new(IrqTrigger::new(irqfd));
    let Ok(device) = Balloon::new(interrupt.clone()) else { return };
    let balloon = Arc::new(Mutex::new(device));
    let mut driver = HostileDriver::new(HostileDriver::anonymous_memory(), balloon.clone(), interrupt);
    let mut input = Input::new(data);
    while !input.is_empty() {
        let op = input.u8() % 8;
        if driver.step(op, &mut input) {
            continue;
        }
        let mut device = lock(&balloon);
        match op {
            4 => device.process_queue(INFLATE),
            5 => device.process_queue(DEFLATE),
            6 => device.process_queue(REPORTING),
            _ => {
                let _ = device.quiesce();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_without_panicking() {
        balloon_guest(&[]);
        balloon_guest(&[0xff; 300]);
        balloon_guest(&[6, 4, 5, 7, 1, 2, 3, 6, 6, 0, 0, 0x10, 8, 1, 2, 3, 4, 5, 6, 7, 8, 6]);
    }
}
