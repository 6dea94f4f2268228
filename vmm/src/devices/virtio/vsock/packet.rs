//! Reading and writing vsock packets in guest descriptor chains.
//!
//! A packet is a 44-byte header followed by `len` bytes of payload, and the
//! virtio spec lets a driver lay both out over any number of descriptors
//! (virtio 1.2, 2.6.4: "the device MUST NOT make assumptions about the
//! particular arrangement of descriptors"). Linux ≥ 6.17 sends nonlinear
//! skbs whose payload spans several descriptors; older guests put the header
//! and the payload in one descriptor each on TX and both in one on RX.
//!
//! Written here rather than with `virtio_vsock::packet::VsockPacket`: that
//! type (0.12) accepts the payload only in one descriptor and rejects every
//! other layout, which drops the guest's data. We use virtio-queue's own
//! `Reader`/`Writer` (which gather and scatter over a chain's readable or
//! writable descriptors, with guest-memory bounds checked) and copy through
//! a bounded scratch buffer, so any layout of at most [`MAX_PKT_DATA`]
//! bytes of payload works.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{GuestMemoryMmap, VolatileSlice};

use super::{PktHeader, MAX_PKT_DATA};

/// Size of `struct virtio_vsock_hdr`.
pub const PKT_HEADER_SIZE: usize = 44;

/// What is wrong with a descriptor chain the guest gave us.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The chain points outside guest memory or its lengths overflow.
    #[error("descriptor chain: {0}")]
    Chain(virtio_queue::Error),
    /// The chain is shorter than a packet header.
    #[error("descriptor chain holds {0} bytes, less than the {PKT_HEADER_SIZE}-byte packet header")]
    NoHeader(usize),
    /// The header claims more payload than a packet may carry.
    #[error("packet payload length {0} exceeds the {MAX_PKT_DATA}-byte limit")]
    TooLong(u32),
    /// The header claims more payload than the chain holds.
    #[error("packet header claims {claimed} payload bytes but the chain holds {held}")]
    Truncated {
        /// Payload length in the header.
        claimed: u32,
        /// Bytes the chain's readable descriptors hold after the header.
        held: usize,
    },
}

impl PktHeader {
    /// Decodes a little-endian `struct virtio_vsock_hdr`.
    pub fn from_bytes(b: &[u8; PKT_HEADER_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or_default());
        PktHeader {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// Encodes this header as a little-endian `struct virtio_vsock_hdr`.
    pub fn to_bytes(&self) -> [u8; PKT_HEADER_SIZE] {
        let mut b = [0u8; PKT_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Reads the packet in a TX chain: its header, and its payload into
/// `scratch` (resized to the payload length).
pub fn read_tx(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    scratch: &mut Vec<u8>,
) -> Result<PktHeader, PacketError> {
    let mut reader: Reader<'_> = Reader::new(mem, chain).map_err(PacketError::Chain)?;
    let available = reader.available_bytes();
    let mut raw = [0u8; PKT_HEADER_SIZE];
    reader.read_exact(&mut raw).map_err(|_| PacketError::NoHeader(available))?;
    let header = PktHeader::from_bytes(&raw);
    if header.len > MAX_PKT_DATA {
        return Err(PacketError::TooLong(header.len));
    }
    let held = reader.available_bytes();
    // `len` is at most MAX_PKT_DATA: it fits any usize.
    let len = header.len as usize;
    if len > held {
        return Err(PacketError::Truncated { claimed: header.len, held });
    }
    scratch.resize(len, 0);
    reader.read_exact(scratch).map_err(|_| PacketError::Truncated { claimed: header.len, held })?;
    Ok(header)
}

/// A writable (RX) chain being filled with one packet.
pub struct RxBuffer<'a> {
    header: Writer<'a>,
    data: Writer<'a>,
}

impl std::fmt::Debug for RxBuffer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxBuffer").field("data_room", &self.data_room()).finish()
    }
}

impl<'a> RxBuffer<'a> {
    /// Takes an RX chain's writable descriptors; the payload room is what
    /// follows the header, up to [`MAX_PKT_DATA`].
    pub fn new(mem: &'a GuestMemoryMmap, chain: DescriptorChain<&'a GuestMemoryMmap>) -> Result<Self, PacketError> {
        let mut header: Writer<'a> = Writer::new(mem, chain).map_err(PacketError::Chain)?;
        let available = header.available_bytes();
        if available < PKT_HEADER_SIZE {
            return Err(PacketError::NoHeader(available));
        }
        let data = header.split_at(PKT_HEADER_SIZE).map_err(PacketError::Chain)?;
        Ok(RxBuffer { header, data })
    }

    /// Payload bytes this chain can take.
    pub fn data_room(&self) -> usize {
        self.data.available_bytes().min(MAX_PKT_DATA as usize)
    }

    /// Writes `header` and its payload (`data`, `header.len` bytes of it)
    /// into the chain; returns the bytes written (the used length).
    pub fn fill(mut self, header: &PktHeader, data: &[u8]) -> u32 {
        let payload = &data[..(header.len as usize).min(data.len())];
        // Both writes fit: the header room was checked in `new` and the
        // payload is at most `data_room()` bytes (the muxer filled a buffer
        // of that size).
        let ok = self.header.write_all(&header.to_bytes()).is_ok() && self.data.write_all(payload).is_ok();
        debug_assert!(ok, "RX packet larger than its chain");
        (PKT_HEADER_SIZE + payload.len()) as u32
    }
}

/// A scratch buffer as the muxer's payload slice (None when empty).
pub fn scratch_slice(scratch: &mut [u8]) -> Option<VolatileSlice<'_, ()>> {
    (!scratch.is_empty()).then(|| VolatileSlice::from(scratch))
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
