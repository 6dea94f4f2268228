//! vsock packets laid out over arbitrary descriptor chains: the layout
//! (descriptor count, sizes, directions, gaps) and the bytes come from the
//! input, and what the device reads or writes is checked against the bytes
//! the chain holds, not just for panics.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::guest::HostileDriver;
use super::Input;
use crate::devices::virtio::vsock::packet::{read_tx, PacketError, RxBuffer, PKT_HEADER_SIZE};
use crate::devices::virtio::vsock::{PktHeader, MAX_PKT_DATA};

const QUEUE_SIZE: u16 = 16;
const DESC_TABLE: u64 = 0;
const AVAIL_RING: u64 = 0x100;
const USED_RING: u64 = 0x200;
const BUFFERS: u64 = 0x1000;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// One descriptor of the chain the input describes.
struct Part {
    addr: u64,
    len: u32,
    writable: bool,
}

/// Builds a one-chain queue in `mem` from the input; returns its parts.
fn build_chain(mem: &GuestMemoryMmap, input: &mut Input<'_>) -> Option<(Queue, Vec<Part>)> {
    let count = usize::from(input.u8() % 8) + 1;
    let mut parts = Vec::with_capacity(count);
    let mut addr = BUFFERS;
    for i in 0..count {
        let len = u32::from(input.u16() % 0x2400);
        // Mostly in bounds; sometimes running past the end of guest RAM.
        let gap = u64::from(input.u8() % 4) * 0x10;
        let part = Part { addr: addr + gap, len, writable: input.u8() & 1 == 1 };
        addr = part.addr + u64::from(len);
        let flags =
            if i + 1 < count { VRING_DESC_F_NEXT } else { 0 } | if part.writable { VRING_DESC_F_WRITE } else { 0 };
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&part.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&part.len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
        mem.write_slice(&raw, GuestAddress(DESC_TABLE + 16 * i as u64)).ok()?;
        parts.push(part);
    }
    // Available ring: flags 0, idx 1, ring[0] = descriptor 0.
    mem.write_slice(&[0, 0, 1, 0, 0, 0], GuestAddress(AVAIL_RING)).ok()?;
    let mut queue = Queue::new(QUEUE_SIZE).ok()?;
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    Some((queue, parts))
}

/// The bytes of the parts with direction `writable`, in chain order, or
/// None if one of them lies outside guest memory.
fn chain_bytes(mem: &GuestMemoryMmap, parts: &[Part], writable: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for part in parts.iter().filter(|p| p.writable == writable) {
        let mut bytes = vec![0u8; part.len as usize];
        mem.read_slice(&mut bytes, GuestAddress(part.addr)).ok()?;
        out.extend_from_slice(&bytes);
    }
    Some(out)
}

/// Fuzz entry point: a TX chain parsed, then an RX chain filled.
pub fn vsock_packet(data: &[u8]) {
    let mut input = Input::new(data);
    let mem = HostileDriver::anonymous_memory();
    check_tx(&mem, &mut input);
    let mem = HostileDriver::anonymous_memory();
    check_rx(&mem, &mut input);
}

fn check_tx(mem: &GuestMemoryMmap, input: &mut Input<'_>) {
    let Some((mut queue, parts)) = build_chain(mem, input) else { return };
    // Readable bytes: a header whose length is near what the chain holds,
    // then input bytes.
    let readable: u64 = parts.iter().filter(|p| !p.writable).map(|p| u64::from(p.len)).sum();
    let len_delta = i64::from(input.u8() as i8);
    let claimed = (readable as i64 - PKT_HEADER_SIZE as i64 + len_delta).clamp(0, i64::from(u32::MAX)) as u32;
    let header = PktHeader { len: claimed, src_cid: 3, dst_cid: 2, op: 5, type_: 1, ..Default::default() };
    let mut stream = header.to_bytes().to_vec();
    stream.extend_from_slice(input.bytes(readable as usize));
    let mut offset = 0;
    for part in parts.iter().filter(|p| !p.writable) {
        let end = (offset + part.len as usize).min(stream.len());
        if offset < end {
            let _ = mem.write_slice(&stream[offset..end], GuestAddress(part.addr));
        }
        offset += part.len as usize;
    }
    let Some(chain) = queue.pop_descriptor_chain(mem) else { return };
    let mut scratch = Vec::new();
    let result = read_tx(mem, chain, &mut scratch);
    let Some(held) = chain_bytes(mem, &parts, false) else {
        assert!(matches!(result, Err(PacketError::Chain(_))), "out-of-memory chain accepted: {result:?}");
        return;
    };
    match result {
        Ok(got) => {
            assert!(got.len <= MAX_PKT_DATA, "oversized packet accepted");
            assert_eq!(got.len as usize, scratch.len(), "payload length");
            assert_eq!(got.to_bytes()[..], held[..PKT_HEADER_SIZE], "header bytes");
            assert!(scratch[..] == held[PKT_HEADER_SIZE..PKT_HEADER_SIZE + scratch.len()], "payload bytes");
        }
        Err(PacketError::NoHeader(n)) => assert!(n < PKT_HEADER_SIZE && n == held.len(), "NoHeader({n})"),
        Err(PacketError::TooLong(n)) => assert!(n > MAX_PKT_DATA),
        Err(PacketError::Truncated { claimed, held: h }) => {
            assert!(claimed as usize > h && h == held.len() - PKT_HEADER_SIZE, "Truncated {claimed} {h}")
        }
        Err(PacketError::Chain(_)) => {}
    }
}

fn check_rx(mem: &GuestMemoryMmap, input: &mut Input<'_>) {
    let Some((mut queue, parts)) = build_chain(mem, input) else { return };
    let Some(chain) = queue.pop_descriptor_chain(mem) else { return };
    let writable: u64 = parts.iter().filter(|p| p.writable).map(|p| u64::from(p.len)).sum();
    let buffer = match RxBuffer::new(mem, chain) {
        Ok(buffer) => buffer,
        Err(PacketError::NoHeader(n)) => return assert!(n < PKT_HEADER_SIZE && n as u64 == writable),
        Err(_) => return,
    };
    let room = buffer.data_room();
    assert!(room as u64 == (writable - PKT_HEADER_SIZE as u64).min(u64::from(MAX_PKT_DATA)), "room {room}");
    let want = usize::from(input.u16()) % (room + 1);
    let payload = input.bytes(want).to_vec();
    let header = PktHeader { len: payload.len() as u32, src_cid: 2, dst_cid: 3, op: 5, type_: 1, ..Default::default() };
    let used = buffer.fill(&header, &payload);
    assert_eq!(used as usize, PKT_HEADER_SIZE + payload.len(), "used length");
    let written = chain_bytes(mem, &parts, true).unwrap_or_default();
    assert_eq!(written[..PKT_HEADER_SIZE], header.to_bytes()[..], "header written");
    assert!(written[PKT_HEADER_SIZE..used as usize] == payload[..], "payload written");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_check_their_properties() {
        // Header and payload over three readable descriptors, exact length;
        // then an RX chain of two writable descriptors.
        let mut tx = vec![3u8];
        for len in [44u16, 1000, 3000] {
            tx.extend_from_slice(&len.to_le_bytes());
            tx.extend_from_slice(&[0, 0]);
        }
        tx.push(0);
        tx.extend(std::iter::repeat_n(0x5a, 4000));
        let mut rx = vec![1u8];
        for len in [30u16, 2000] {
            rx.extend_from_slice(&len.to_le_bytes());
            rx.extend_from_slice(&[0, 1]);
        }
        rx.extend_from_slice(&1500u16.to_le_bytes());
        rx.extend(std::iter::repeat_n(0xa5, 1500));
        vsock_packet(&[tx, rx].concat());
        vsock_packet(&[0xff; 200]);
        vsock_packet(&[]);
    }
}
