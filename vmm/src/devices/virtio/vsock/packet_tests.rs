//! Packets laid out over descriptor chains the way drivers may lay them out.

use super::*;
use crate::devices::virtio::vsock::{op, HOST_CID, TYPE_STREAM};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const BUFFERS: u64 = 0x10_0000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("guest memory")
}

fn header(len: u32) -> PktHeader {
    PktHeader {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: 1024,
        len,
        type_: TYPE_STREAM,
        op: op::RW,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 77,
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Writes `bytes` over descriptors of the given sizes (placed with gaps
/// between them) and returns the chain's descriptors.
fn lay_out(mem: &GuestMemoryMmap, bytes: &[u8], sizes: &[u32], flags: u16) -> Vec<RawDescriptor> {
    let mut addr = BUFFERS;
    let mut offset = 0usize;
    let mut descs = Vec::new();
    for &size in sizes {
        let end = (offset + size as usize).min(bytes.len());
        if offset < end {
            mem.write_slice(&bytes[offset..end], GuestAddress(addr)).expect("write");
        }
        descs.push(RawDescriptor::from(SplitDescriptor::new(addr, size, flags, 0)));
        offset += size as usize;
        addr += u64::from(size) + 0x1000;
    }
    descs
}

fn read_back(mem: &GuestMemoryMmap, sizes: &[u32], total: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut addr = BUFFERS;
    for &size in sizes {
        let mut part = vec![0u8; size as usize];
        mem.read_slice(&mut part, GuestAddress(addr)).expect("read");
        out.extend_from_slice(&part);
        addr += u64::from(size) + 0x1000;
    }
    out.truncate(total);
    out
}

#[test]
fn header_round_trips_through_its_wire_form() {
    let h = header(4096);
    assert_eq!(PktHeader::from_bytes(&h.to_bytes()), h);
    assert_eq!(&h.to_bytes()[24..28], &4096u32.to_le_bytes(), "len sits at offset 24");
}

#[test]
fn tx_packets_are_read_whatever_their_descriptor_layout() {
    let layouts: &[(&str, u32, &[u32])] = &[
        ("header and payload in one descriptor", 3000, &[3044]),
        ("header, then payload (Linux < 6.17)", 4096, &[44, 4096]),
        ("payload over pages (nonlinear skb)", 10_000, &[44, 4096, 4096, 1808]),
        ("header split, payload split mid-page", 5000, &[20, 24, 1, 4999]),
        ("header and payload sharing descriptors", 65_536, &[50, 30_000, 35_530]),
        ("chain longer than the packet", 100, &[44, 4096]),
        ("empty descriptors in between", 300, &[44, 0, 150, 0, 150]),
    ];
    for (what, len, sizes) in layouts {
        let mem = memory();
        let payload = pattern(*len as usize);
        let mut bytes = header(*len).to_bytes().to_vec();
        bytes.extend_from_slice(&payload);
        let q = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let chain = q.build_desc_chain(&lay_out(&mem, &bytes, sizes, 0)).expect("chain");
        let mut scratch = Vec::new();
        let got = read_tx(&mem, chain, &mut scratch).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, header(*len), "{what}: header");
        assert!(scratch == payload, "{what}: payload differs");
    }
}

#[test]
fn bad_tx_chains_are_refused_with_what_is_wrong() {
    let mem = memory();
    let q = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let mut scratch = Vec::new();

    let chain = q.build_desc_chain(&lay_out(&mem, &[0; 30], &[30], 0)).expect("chain");
    let err = read_tx(&mem, chain, &mut scratch).unwrap_err();
    assert!(matches!(err, PacketError::NoHeader(30)), "{err}");

    let bytes = header(5000).to_bytes();
    let chain = q.build_desc_chain(&lay_out(&mem, &bytes, &[44, 4000], 0)).expect("chain");
    let err = read_tx(&mem, chain, &mut scratch).unwrap_err();
    assert!(matches!(err, PacketError::Truncated { claimed: 5000, held: 4000 }), "{err}");
    assert!(err.to_string().contains("5000") && err.to_string().contains("4000"), "{err}");

    let bytes = header(MAX_PKT_DATA + 1).to_bytes();
    let chain = q.build_desc_chain(&lay_out(&mem, &bytes, &[44, 4096], 0)).expect("chain");
    let err = read_tx(&mem, chain, &mut scratch).unwrap_err();
    assert!(matches!(err, PacketError::TooLong(_)), "{err}");

    // A payload in a device-writable descriptor is not the driver's data.
    let mut bytes = header(100).to_bytes().to_vec();
    bytes.extend_from_slice(&[1; 100]);
    let mut descs = lay_out(&mem, &bytes, &[44, 100], 0);
    let w = SplitDescriptor::from(descs[1]);
    descs[1] = RawDescriptor::from(SplitDescriptor::new(w.addr().0, w.len(), VRING_DESC_F_WRITE as u16, 0));
    let chain = q.build_desc_chain(&descs).expect("chain");
    let err = read_tx(&mem, chain, &mut scratch).unwrap_err();
    assert!(matches!(err, PacketError::Truncated { claimed: 100, held: 0 }), "{err}");

    // A descriptor past the end of guest memory.
    let descs = [RawDescriptor::from(SplitDescriptor::new(0x3f_fff0, 44, 0, 0))];
    let chain = q.build_desc_chain(&descs).expect("chain");
    let err = read_tx(&mem, chain, &mut scratch).unwrap_err();
    assert!(matches!(err, PacketError::Chain(_)), "{err}");
}

#[test]
fn rx_packets_are_written_whatever_their_descriptor_layout() {
    let layouts: &[(&str, &[u32])] = &[
        ("one 4 KiB buffer (Linux)", &[4096]),
        ("header, then data", &[44, 4096]),
        ("header split, data over several", &[10, 34, 1000, 1, 3000]),
        ("header and data sharing", &[100, 2000]),
    ];
    for (what, sizes) in layouts {
        let mem = memory();
        let q = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let chain = q.build_desc_chain(&lay_out(&mem, &[], sizes, VRING_DESC_F_WRITE as u16)).expect("chain");
        let buffer = RxBuffer::new(&mem, chain).unwrap_or_else(|e| panic!("{what}: {e}"));
        let room = buffer.data_room();
        assert_eq!(room, sizes.iter().sum::<u32>() as usize - PKT_HEADER_SIZE, "{what}: room");
        let payload = pattern(room);
        let used = buffer.fill(&header(room as u32), &payload);
        assert_eq!(used as usize, PKT_HEADER_SIZE + room, "{what}: used length");
        let written = read_back(&mem, sizes, used as usize);
        assert_eq!(&written[..PKT_HEADER_SIZE], &header(room as u32).to_bytes(), "{what}: header");
        assert!(written[PKT_HEADER_SIZE..] == payload[..], "{what}: payload differs");
    }
}

#[test]
fn rx_chains_without_room_for_a_header_are_refused() {
    let mem = memory();
    let q = MockSplitQueue::create(&mem, GuestAddress(0), 16);
    let chain = q.build_desc_chain(&lay_out(&mem, &[], &[20, 20], VRING_DESC_F_WRITE as u16)).expect("chain");
    let err = RxBuffer::new(&mem, chain).expect_err("refused");
    assert!(matches!(err, PacketError::NoHeader(40)), "{err}");
    // Device-readable descriptors are not room for the device to write.
    let chain = q.build_desc_chain(&lay_out(&mem, &[], &[4096], 0)).expect("chain");
    assert!(matches!(RxBuffer::new(&mem, chain), Err(PacketError::NoHeader(0))));
    // Header-only room is fine (control packets need no more).
    let chain = q.build_desc_chain(&lay_out(&mem, &[], &[44], VRING_DESC_F_WRITE as u16)).expect("chain");
    assert_eq!(RxBuffer::new(&mem, chain).expect("header room").data_room(), 0);
}
