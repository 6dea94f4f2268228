//! The vsock device under a hostile guest and hostile host clients.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::guest::{HostileDriver, RunDir};
use super::Input;
use crate::devices::bus::lock;
use crate::devices::virtio::vsock::muxer::parse_connect;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::IrqTrigger;

/// Most host connections one run opens.
const MAX_HOST_STREAMS: usize = 8;

/// A hostile guest drives the vsock device while host clients connect to
/// its Unix socket, send `CONNECT` lines (well-formed or not) and data,
/// read and hang up.
pub fn vsock_guest(data: &[u8]) {
    let Ok(dir) = RunDir::new() else { return };
    let uds = dir.0.join("v.sock");
    let Ok(irqfd) = EventFd::new(libc::EFD_NONBLOCK) else { return };
    let interrupt = Arc::new(IrqTrigger::new(irqfd));
    let Ok(device) = Vsock::new(3, &uds, interrupt.clone()) else { return };
    let vsock = Arc::new(Mutex::new(device));
    let mut driver = HostileDriver::new(HostileDriver::anonymous_memory(), vsock.clone(), interrupt);
    let mut hosts: Vec<UnixStream> = Vec::new();
    let mut input = Input::new(data);
    while !input.is_empty() {
        let op = input.u8() % 10;
        if driver.step(op, &mut input) {
            continue;
        }
        match op {
            4 => lock(&vsock).process_tx(),
            5 => lock(&vsock).process_rx(),
            6 if hosts.len() < MAX_HOST_STREAMS => {
                if let Ok(mut stream) = UnixStream::connect(&uds) {
                    let _ = stream.set_nonblocking(true);
                    let port = input.u16();
                    if input.u8() & 1 == 0 {
                        let _ = stream.write_all(format!("CONNECT {port}\n").as_bytes());
                    } else {
                        let len = usize::from(input.u8());
                        let _ = stream.write_all(input.bytes(len));
                    }
                    hosts.push(stream);
                }
                lock(&vsock).process_backend();
            }
            7 => {
                let index = usize::from(input.u8()) % hosts.len().max(1);
                let len = usize::from(input.u16() % 4096);
                let bytes = input.bytes(len);
                if let Some(stream) = hosts.get_mut(index) {
                    let _ = stream.write(bytes);
                }
                lock(&vsock).process_backend();
            }
            8 => {
                let index = usize::from(input.u8()) % hosts.len().max(1);
                if let Some(stream) = hosts.get_mut(index) {
                    let mut buf = [0u8; 4096];
                    let _ = stream.read(&mut buf);
                }
                lock(&vsock).process_backend();
            }
            9 => {
                if !hosts.is_empty() {
                    let index = usize::from(input.u8()) % hosts.len();
                    hosts.swap_remove(index);
                }
                lock(&vsock).process_backend();
            }
            _ => lock(&vsock).process_backend(),
        }
    }
}

/// A host client's request line. Whatever parses must be the canonical
/// line of the port it names.
pub fn hybrid_vsock_connect(data: &[u8]) {
    if let Some(port) = parse_connect(data) {
        let canonical = format!("CONNECT {port}");
        assert_eq!(parse_connect(canonical.as_bytes()), Some(port), "{data:?}");
        let text = String::from_utf8_lossy(data);
        let digits = text.trim_end_matches('\r').trim_start_matches("CONNECT ");
        assert_eq!(digits.trim_start_matches('0').parse::<u32>().unwrap_or(0), port, "{data:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeds: a full bring-up with rings in RAM, host connects with good
    /// and bad lines, data, hang-ups; and plain garbage.
    #[test]
    fn seeds_run_without_panicking() {
        let mut bring_up = vec![3u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 3];
        for queue in 0..3u16 {
            bring_up.extend_from_slice(&[4]);
            bring_up.extend_from_slice(&(0x1000 * (queue + 1)).to_le_bytes());
            bring_up.extend_from_slice(&(0x1000 * (queue + 1) + 0x400).to_le_bytes());
            bring_up.extend_from_slice(&(0x1000 * (queue + 1) + 0x800).to_le_bytes());
        }
        let program: Vec<u8> = [
            bring_up,
            vec![6, 0x00, 0x04, 0],
            vec![6, 0, 0, 1, 5, b'C', b'O', b'N', b'N', b'X'],
            vec![0, 0x00, 0x20, 8, 1, 2, 3, 4, 5, 6, 7, 8, 4, 5],
            vec![7, 0, 4, 0, b'h', b'i', b'!', b'\n'],
            vec![8, 0, 9, 0, 4, 5, 10],
        ]
        .concat();
        vsock_guest(&program);
        vsock_guest(&[0xa5; 300]);
        vsock_guest(&[]);
    }

    /// The fuzzer's first finding (a libFuzzer timeout): an avail index
    /// far ahead of the ring made TX processing spin forever. It must
    /// return (the test would hang otherwise).
    #[test]
    fn a_runaway_avail_index_does_not_spin() {
        vsock_guest(&[
            172, 3, 3, 0, 255, 255, 255, 255, 255, 255, 255, 24, 0, 0, 0, 8, 206, 206, 206, 0, 0, 0, 103, 103, 103,
            103, 103, 103, 103, 103, 103, 103, 103, 103, 103, 8, 236, 172, 3, 172,
        ]);
    }

    #[test]
    fn connect_lines_round_trip() {
        for line in [&b"CONNECT 1024"[..], b"CONNECT 0001024", b"CONNECT 4294967295\r", b"CONNECT 4294967296", b"\xff"]
        {
            hybrid_vsock_connect(line);
        }
    }
}
