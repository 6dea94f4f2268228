//! virtio-fs against a vhost-user backend that answers with arbitrary
//! bytes, then under a hostile guest.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::Frontend;
use vmm_sys_util::eventfd::EventFd;

use super::guest::{HostileDriver, MEM_SIZE};
use super::Input;
use crate::devices::bus::lock;
use crate::devices::virtio::fs::device::NUM_QUEUES;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::{IrqTrigger, VirtioDevice};

/// The first two bytes say how many of the rest are the backend's answers
/// (written to the socket up front, then EOF: no answer ever blocks); the
/// remainder drives the guest side, with snapshot-style quiesce/resume.
pub fn fs_vhost_user(data: &[u8]) {
    let mut input = Input::new(data);
    let reply_len = usize::from(input.u16());
    let replies = input.bytes(reply_len);
    let Ok((mut backend, ours)) = UnixStream::pair() else { return };
    if backend.write_all(replies).is_err() || backend.shutdown(std::net::Shutdown::Write).is_err() {
        return;
    }
    // The backend reads (and ignores) every request, as a live one would:
    // an unread socket fills and blocks the frontend's sendmsg, which is a
    // hang of the harness, not of the device.
    let drain = std::thread::spawn(move || std::io::copy(&mut backend, &mut std::io::sink()));
    let Ok(irqfd) = EventFd::new(libc::EFD_NONBLOCK) else { return };
    let interrupt = Arc::new(IrqTrigger::new(irqfd));
    let frontend = Frontend::from_stream(ours, NUM_QUEUES as u64);
    let Ok(mut device) = Fs::with_frontend("fuzz", Path::new("fuzz-backend"), frontend, interrupt.clone()) else {
        return;
    };
    // This backend never answers a request: a snapshot does not wait.
    device.set_drain_timeout(std::time::Duration::ZERO);
    let Ok(mem) = crate::memory::create(MEM_SIZE) else { return };
    let fs = Arc::new(Mutex::new(device));
    let mut driver = HostileDriver::new(mem, fs.clone(), interrupt);
    while !input.is_empty() {
        let op = input.u8() % 6;
        if driver.step(op, &mut input) {
            continue;
        }
        let mut device = lock(&fs);
        if op == 4 {
            if device.quiesce().is_ok() {
                let _ = device.resume();
            }
        } else {
            device.reset();
        }
    }
    // The frontend's socket closes with the device: the drain sees EOF.
    drop(driver);
    drop(fs);
    let _ = drain.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_without_panicking() {
        fs_vhost_user(&[]);
        fs_vhost_user(&[0xff; 200]);
        // A plausible GET_FEATURES answer (header + u64), then garbage.
        let mut program = vec![20, 0];
        program.extend_from_slice(&1u32.to_le_bytes());
        program.extend_from_slice(&(0x5u32).to_le_bytes());
        program.extend_from_slice(&8u32.to_le_bytes());
        program.extend_from_slice(&(1u64 << 32).to_le_bytes());
        program.extend_from_slice(&[3, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 2, 4, 0, 16, 0, 20, 0, 24, 4, 5]);
        fs_vhost_user(&program);
    }
}
