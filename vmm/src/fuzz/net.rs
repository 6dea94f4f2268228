//! The virtio-net device under a hostile guest, its tap played by a
//! datagram socket whose peer sends arbitrary frames.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::guest::HostileDriver;
use super::Input;
use crate::devices::bus::lock;
use crate::devices::virtio::net::tap::DatagramBackend as Datagrams;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::IrqTrigger;

/// A hostile guest drives the NIC while the network side sends frames of
/// any size and content.
pub fn net_guest(data: &[u8]) {
    let Ok((ours, peer)) = UnixDatagram::pair() else { return };
    if ours.set_nonblocking(true).is_err() || peer.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(irqfd) = EventFd::new(libc::EFD_NONBLOCK) else { return };
    let interrupt = Arc::new(IrqTrigger::new(irqfd));
    let mut input = Input::new(data);
    let mtu = Some(input.u16()).filter(|m| *m >= 68);
    let Ok(device) = Net::new([0x02, 0, 0, 0, 0, 1], mtu, Box::new(Datagrams(ours)), interrupt.clone()) else {
        return;
    };
    let net = Arc::new(Mutex::new(device));
    let mut driver = HostileDriver::new(HostileDriver::anonymous_memory(), net.clone(), interrupt);
    while !input.is_empty() {
        let op = input.u8() % 8;
        if driver.step(op, &mut input) {
            continue;
        }
        match op {
            4 => lock(&net).process_tx(),
            5 => lock(&net).process_rx(),
            6 => {
                let len = usize::from(input.u16() % 9000);
                let _ = peer.send(input.bytes(len));
                lock(&net).process_rx();
            }
            _ => {
                let mut frame = [0u8; 65_536];
                while peer.recv(&mut frame).is_ok() {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A libFuzzer timeout: a ring claiming chains it could not yield
    /// made RX/TX processing spin. It must return.
    #[test]
    fn a_broken_ring_does_not_spin() {
        net_guest(&[
            65, 0, 0, 0, 0, 4, 235, 235, 235, 49, 235, 0, 0, 149, 236, 191, 159, 191, 191, 191, 191, 177, 47, 64,
        ]);
    }

    #[test]
    fn seeds_run_without_panicking() {
        let mut program = vec![0xdc, 0x05, 3, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 2];
        for queue in 0..2u16 {
            program.push(4);
            program.extend_from_slice(&(0x2000 * (queue + 1)).to_le_bytes());
            program.extend_from_slice(&(0x2000 * (queue + 1) + 0x400).to_le_bytes());
            program.extend_from_slice(&(0x2000 * (queue + 1) + 0x800).to_le_bytes());
        }
        program.extend_from_slice(&[6, 64, 0]);
        program.extend_from_slice(&[0xab; 64]);
        program.extend_from_slice(&[4, 5, 7]);
        net_guest(&program);
        net_guest(&[0x5a; 500]);
        net_guest(&[]);
    }
}
