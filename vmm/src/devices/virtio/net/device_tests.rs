//! virtio-net queue handling against mock guest queues and a datagram
//! socket pair standing in for the tap (both keep frame boundaries).

use std::os::unix::net::UnixDatagram;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::test_chains::{chain, used};

const MAC: [u8; 6] = [0x02, 0, 0x0a, 0x58, 0, 0x2f];
const BUFFERS: u64 = 0x10_0000;

use crate::devices::virtio::net::tap::DatagramBackend as Socket;

struct Rig<'a> {
    mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    net: Net,
    peer: UnixDatagram,
    rx_descs: u16,
    tx_descs: u16,
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).expect("guest memory")
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Rig<'a> {
        let (ours, peer) = UnixDatagram::pair().expect("socket pair");
        ours.set_nonblocking(true).expect("nonblocking");
        peer.set_nonblocking(true).expect("nonblocking");
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")));
        let net = Net::new(MAC, None, Box::new(Socket(ours)), irq).expect("device");
        Rig {
            mem,
            rxq: MockSplitQueue::create(mem, GuestAddress(0), 16),
            txq: MockSplitQueue::create(mem, GuestAddress(0x1_0000), 16),
            net,
            peer,
            rx_descs: 0,
            tx_descs: 0,
        }
    }

    fn activate(&mut self) {
        let queues = vec![self.rxq.create_queue().expect("rx"), self.txq.create_queue().expect("tx")];
        let features = self.net.avail_features();
        self.net
            .activate(ActivateContext { mem: self.mem.clone(), queues, acked_features: features })
            .expect("activate");
    }

    /// Posts one RX chain of `(addr, len)` writable descriptors.
    fn post_rx(&mut self, parts: &[(u64, u32)]) {
        let descs = chain(parts, VRING_DESC_F_WRITE as u16, self.rx_descs);
        self.rxq.add_desc_chains(&descs, self.rx_descs).expect("post rx");
        self.rx_descs += parts.len() as u16;
    }

    /// Posts one TX chain whose readable descriptors hold `parts`.
    fn post_tx(&mut self, parts: &[(u64, &[u8])]) {
        for (addr, bytes) in parts {
            self.mem.write_slice(bytes, GuestAddress(*addr)).expect("write");
        }
        let layout: Vec<(u64, u32)> = parts.iter().map(|(a, b)| (*a, b.len() as u32)).collect();
        let descs = chain(&layout, 0, self.tx_descs);
        self.txq.add_desc_chains(&descs, self.tx_descs).expect("post tx");
        self.tx_descs += parts.len() as u16;
    }

    fn rx_used(&self) -> Vec<(u32, u32)> {
        used(&self.rxq)
    }

    fn tx_used(&self) -> Vec<(u32, u32)> {
        used(&self.txq)
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(payload);
    f
}

fn get(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn config_space_holds_mac_and_mtu_and_bad_settings_are_refused() {
    let (a, _b) = UnixDatagram::pair().expect("pair");
    let irq = || Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")));
    let net = Net::new(MAC, Some(1450), Box::new(Socket(a)), irq()).expect("device");
    let mut cfg = [0u8; 12];
    net.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1450);
    assert_ne!(net.avail_features() & feature::MAC, 0);

    let (a, _b) = UnixDatagram::pair().expect("pair");
    let err = Net::new([0x01, 0, 0, 0, 0, 1], None, Box::new(Socket(a)), irq()).unwrap_err();
    assert!(err.to_string().contains("multicast"), "{err}");
    let (a, _b) = UnixDatagram::pair().expect("pair");
    let err = Net::new(MAC, Some(20), Box::new(Socket(a)), irq()).unwrap_err();
    assert!(err.to_string().contains("MTU 20"), "{err}");
}

#[test]
fn rx_frames_reach_the_guest_whole_with_num_buffers_set() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    // A buffer split over two descriptors, as drivers may post it.
    rig.post_rx(&[(BUFFERS, 8), (BUFFERS + 0x1000, 2040)]);
    rig.activate();
    let payload: Vec<u8> = (0..100u8).collect();
    rig.peer.send(&frame(&payload)).expect("send");
    rig.net.process_rx();

    assert_eq!(rig.rx_used(), vec![(0, (VNET_HDR_LEN + payload.len()) as u32)]);
    let mut head = [0u8; 8];
    mem.read_slice(&mut head, GuestAddress(BUFFERS)).expect("read");
    let mut rest = vec![0u8; VNET_HDR_LEN - 8 + payload.len()];
    mem.read_slice(&mut rest, GuestAddress(BUFFERS + 0x1000)).expect("read");
    assert_eq!(&rest[2..4], &1u16.to_le_bytes(), "num_buffers is 1");
    assert_eq!(&rest[4..], &payload[..]);
    assert_eq!(get(&rig.net.metrics.rx_frames), 1);
    assert_eq!(get(&rig.net.metrics.rx_bytes), 100);
}

#[test]
fn rx_waits_for_guest_buffers_without_losing_the_frame() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    rig.activate();
    rig.peer.send(&frame(b"first")).expect("send");
    rig.peer.send(&frame(b"second")).expect("send");
    rig.net.process_rx();
    assert!(rig.net.rx_waiting, "no buffers: the device must stop polling the tap");
    assert!(rig.rx_used().is_empty());

    rig.post_rx(&[(BUFFERS, 2048)]);
    rig.post_rx(&[(BUFFERS + 0x1000, 2048)]);
    rig.net.process_rx();
    assert!(!rig.net.rx_waiting);
    assert_eq!(rig.rx_used(), vec![(0, 17), (1, 18)]);
    let mut got = [0u8; 6];
    mem.read_slice(&mut got, GuestAddress(BUFFERS + 0x1000 + VNET_HDR_LEN as u64)).expect("read");
    assert_eq!(&got, b"second", "frames stay in order");
}

#[test]
fn rx_frames_larger_than_the_guest_buffer_are_dropped_and_the_buffer_kept() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    rig.post_rx(&[(BUFFERS, 64)]);
    rig.activate();
    rig.peer.send(&frame(&[7u8; 200])).expect("send");
    rig.peer.send(&frame(b"small")).expect("send");
    rig.net.process_rx();
    assert_eq!(rig.rx_used(), vec![(0, 17)], "the buffer carries the next frame");
    assert_eq!(get(&rig.net.metrics.rx_dropped), 1);
}

#[test]
fn an_rx_chain_outside_guest_memory_is_returned_and_the_frame_kept() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    rig.post_rx(&[(0x4000_0000, 2048)]);
    rig.post_rx(&[(BUFFERS, 2048)]);
    rig.activate();
    rig.peer.send(&frame(b"kept")).expect("send");
    rig.net.process_rx();
    assert_eq!(rig.rx_used(), vec![(0, 0), (1, 16)]);
    assert_eq!(get(&rig.net.metrics.bad_descriptors), 1);
}

#[test]
fn tx_frames_reach_the_backend_with_offload_fields_cleared() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    rig.activate();
    // A header claiming checksum offload and TSO, which we never offered.
    let mut hdr = [0u8; VNET_HDR_LEN];
    hdr[0] = 1; // NEEDS_CSUM
    hdr[1] = 1; // GSO_TCPV4
    hdr[2..4].copy_from_slice(&1400u16.to_le_bytes());
    rig.post_tx(&[(BUFFERS, &hdr), (BUFFERS + 0x1000, b"hello, "), (BUFFERS + 0x2000, b"world")]);
    rig.net.process_tx();

    let mut got = [0u8; 128];
    let n = rig.peer.recv(&mut got).expect("frame sent");
    assert_eq!(&got[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
    assert_eq!(&got[VNET_HDR_LEN..n], b"hello, world");
    assert_eq!(rig.tx_used(), vec![(0, 0)]);
    assert_eq!(get(&rig.net.metrics.tx_frames), 1);
    assert_eq!(get(&rig.net.metrics.tx_bytes), 12);
}

#[test]
fn hostile_tx_chains_are_returned_unused_and_nothing_is_sent() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    rig.activate();
    let big = vec![0u8; 0x2_0000];
    rig.post_tx(&[(BUFFERS, b"short")]);
    rig.post_tx(&[(BUFFERS + 0x1000, &big[..0x1_0000]), (BUFFERS + 0x1_1000, &big[..0x1_0000])]);
    // Out of guest memory.
    let descs = chain(&[(0x4000_0000, 64)], 0, rig.tx_descs);
    rig.txq.add_desc_chains(&descs, rig.tx_descs).expect("post");
    rig.tx_descs += 1;
    // Only writable descriptors: nothing to read.
    let descs = chain(&[(BUFFERS, 64)], VRING_DESC_F_WRITE as u16, rig.tx_descs);
    rig.txq.add_desc_chains(&descs, rig.tx_descs).expect("post");
    rig.net.process_tx();

    assert_eq!(rig.tx_used().len(), 4, "every chain is returned");
    assert_eq!(get(&rig.net.metrics.bad_descriptors), 4);
    let mut buf = [0u8; 16];
    assert!(rig.peer.recv(&mut buf).is_err(), "nothing reached the backend");
}

#[test]
fn nothing_moves_before_activation_or_after_reset() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    rig.post_rx(&[(BUFFERS, 2048)]);
    rig.peer.send(&frame(b"early")).expect("send");
    rig.net.process_rx();
    rig.net.process_tx();
    assert!(rig.rx_used().is_empty());
    rig.activate();
    assert_eq!(rig.rx_used(), vec![(0, 17)], "activation delivers what waited in the tap");
    rig.net.reset();
    assert!(!rig.net.is_active());
    rig.peer.send(&frame(b"late")).expect("send");
    rig.net.process_rx();
    assert_eq!(rig.rx_used().len(), 1);
}
