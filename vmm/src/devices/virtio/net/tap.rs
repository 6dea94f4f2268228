//! The tap backend of virtio-net. The tap itself ([`Tap`]: open by name,
//! take over a descriptor, its checks) lives in the contract crate, since
//! the runtime opens it in the pod's network namespace and hands it over
//! by descriptor; this module makes it a frame [`super::device::Backend`].

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

pub use kata_like_vmm_contract::tap::{Tap, TapError};

impl super::device::Backend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file().read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let n = self.file().write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, format!("tap took {n} of {} bytes", frame.len())));
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.file().as_raw_fd()
    }
}

/// A Unix datagram socket as the network side: it keeps frame boundaries
/// as a tap does. The tap's stand-in in unit tests and fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug)]
pub struct DatagramBackend(pub std::os::unix::net::UnixDatagram);

#[cfg(any(test, feature = "fuzzing"))]
impl super::Backend for DatagramBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.send(frame).map(drop)
    }
    fn raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }
}
