//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz) and of their
//! regression tests: each feeds arbitrary bytes to code that takes input
//! from outside the VMM, the way the outside would.
//!
//! * [`vsock_guest`], [`net_guest`], [`balloon_guest`]: a hostile guest driver ([`guest`])
//!   programs the device's virtio-mmio registers and writes whatever it
//!   likes into guest memory (descriptor tables, rings, buffers), kicks the
//!   queues, while a host peer talks to the device's host end.
//! * [`fs_vhost_user`]: virtio-fs set up against a vhost-user backend that
//!   answers with arbitrary bytes, then driven by a hostile guest.
//! * [`vsock_packet`]: vsock packets over descriptor chains of any
//!   layout, checked byte for byte against what the chain holds.
//! * [`hybrid_vsock_connect`]: host clients' `CONNECT <port>` lines.
//! * [`api_request`]: lines on the VMM's control socket.
//!
//! The property checked is the one the VMM promises: no panic, no access
//! outside guest memory (AddressSanitizer in the fuzz build), no hang; a
//! bad request gets an error, a bad chain is returned unused or ends in
//! DEVICE_NEEDS_RESET.

mod balloon;
pub mod guest;
mod net;
mod vsock;
mod vsock_packet;

pub use balloon::balloon_guest;
pub use net::net_guest;
pub use vsock::{hybrid_vsock_connect, vsock_guest};
pub use vsock_packet::vsock_packet;

mod fs;
pub use fs::fs_vhost_user;

/// Arbitrary bytes read as little-endian values; past the end everything
/// reads as zero, so every input is a complete program.
#[derive(Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The next `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(n.min(self.data.len()));
        self.data = tail;
        head
    }

    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let src = self.bytes(N);
        out[..src.len()].copy_from_slice(src);
        out
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }

    /// A little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fixed())
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }
}

/// A control-socket request line: parsed, and a snapshot path checked
/// against the jail (nothing is written).
pub fn api_request(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    if let Ok(crate::api::Request::Snapshot { path }) = crate::api::parse_request(&line) {
        let _ = crate::jail::may_write(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reads_past_the_end_as_zeros() {
        let mut input = Input::new(&[1, 2, 3]);
        assert_eq!(input.u16(), 0x0201);
        assert_eq!(input.u32(), 3);
        assert!(input.is_empty());
        assert_eq!(input.u8(), 0);
    }

    #[test]
    fn api_lines_never_panic() {
        for line in [&b"{\"action\":\"snapshot\",\"path\":\"/x\"}"[..], b"\xff\xfe", b"{", b"{\"action\":7}", b""] {
            api_request(line);
        }
    }
}
