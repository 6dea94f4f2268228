//! The vsock device against mock guest queues and real Unix sockets:
//! packets and reads that span descriptors, and hostile RX chains.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_chains::chain;
use crate::devices::virtio::vsock::packet::PKT_HEADER_SIZE;
use crate::devices::virtio::vsock::{op, PktHeader, HOST_CID, TYPE_STREAM};

const GUEST_CID: u64 = 3;
const GUEST_PORT: u32 = 5000;
const HOST_PORT: u32 = 1024;

struct Rig<'a> {
    _dir: tempfile::TempDir,
    mem: &'a GuestMemoryMmap,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    vsock: Vsock,
    uds: std::path::PathBuf,
    rx_descs: u16,
    tx_descs: u16,
    next_addr: u64,
    /// RX chains posted, by head index: their (addr, len) descriptors.
    rx_chains: Vec<(u16, Vec<(u64, u32)>)>,
    rx_seen: usize,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Rig<'a> {
        let dir = tempfile::tempdir().expect("temp dir");
        let uds = dir.path().join("v.sock");
        let irq = Arc::new(IrqTrigger::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")));
        let mut vsock = Vsock::new(GUEST_CID, &uds, irq).expect("device");
        let rxq = MockSplitQueue::create(mem, GuestAddress(0), 256);
        let txq = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 256);
        let evq = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 16);
        let queues =
            vec![rxq.create_queue().expect("rx"), txq.create_queue().expect("tx"), evq.create_queue().expect("ev")];
        let acked_features = vsock.avail_features();
        vsock.activate(ActivateContext { mem: mem.clone(), queues, acked_features }).expect("activate");
        Rig {
            _dir: dir,
            mem,
            rxq,
            txq,
            vsock,
            uds,
            rx_descs: 0,
            tx_descs: 0,
            next_addr: 0x10_0000,
            rx_chains: Vec::new(),
            rx_seen: 0,
        }
    }

    fn place(&mut self, sizes: &[u32]) -> Vec<(u64, u32)> {
        sizes
            .iter()
            .map(|&size| {
                let addr = self.next_addr;
                self.next_addr += u64::from(size).next_multiple_of(0x1000) + 0x1000;
                (addr, size)
            })
            .collect()
    }

    /// The guest sends `header` and `payload` laid out over descriptors of
    /// `sizes` bytes.
    fn send(&mut self, header: PktHeader, payload: &[u8], sizes: &[u32]) {
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let parts = self.place(sizes);
        let mut offset = 0;
        for &(addr, size) in &parts {
            let end = (offset + size as usize).min(bytes.len());
            if offset < end {
                self.mem.write_slice(&bytes[offset..end], GuestAddress(addr)).expect("write");
            }
            offset += size as usize;
        }
        let descs = chain(&parts, 0, self.tx_descs);
        self.txq.add_desc_chains(&descs, self.tx_descs).expect("post tx");
        self.tx_descs += parts.len() as u16;
        self.vsock.process_tx();
    }

    /// The guest posts an RX chain of writable descriptors of `sizes` bytes.
    fn post_rx(&mut self, sizes: &[u32]) {
        let parts = self.place(sizes);
        let descs = chain(&parts, VRING_DESC_F_WRITE as u16, self.rx_descs);
        self.rxq.add_desc_chains(&descs, self.rx_descs).expect("post rx");
        self.rx_chains.push((self.rx_descs, parts.clone()));
        self.rx_descs += parts.len() as u16;
    }

    /// Packets the device has put in RX chains since the last call.
    fn received(&mut self) -> Vec<(PktHeader, Vec<u8>)> {
        let used = self.rxq.used().idx().load() as usize;
        let mut out = Vec::new();
        while self.rx_seen < used {
            let elem = self.rxq.used().ring().ref_at(self.rx_seen).expect("used elem").load();
            self.rx_seen += 1;
            let (_, parts) = self.rx_chains.iter().find(|(head, _)| u32::from(*head) == elem.id()).expect("our chain");
            let mut bytes = Vec::new();
            for &(addr, size) in parts {
                let mut part = vec![0u8; size as usize];
                self.mem.read_slice(&mut part, GuestAddress(addr)).expect("read");
                bytes.extend_from_slice(&part);
            }
            bytes.truncate(elem.len() as usize);
            if bytes.len() < PKT_HEADER_SIZE {
                out.push((PktHeader::default(), bytes));
                continue;
            }
            let raw: [u8; PKT_HEADER_SIZE] = bytes[..PKT_HEADER_SIZE].try_into().expect("header");
            let header = PktHeader::from_bytes(&raw);
            out.push((header, bytes[PKT_HEADER_SIZE..].to_vec()));
        }
        out
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).expect("guest memory")
}

fn guest_header(op: u16, len: u32) -> PktHeader {
    PktHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: GUEST_PORT,
        dst_port: HOST_PORT,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ (i >> 9) as u8)).collect()
}

/// A guest connection to the host's HOST_PORT listener, established.
fn connect<'a>(rig: &mut Rig<'a>) -> UnixStream {
    let mut path = rig.uds.clone().into_os_string();
    path.push(format!("_{HOST_PORT}"));
    let listener = UnixListener::bind(&path).expect("host listener");
    // The request header itself spans two descriptors.
    rig.send(guest_header(op::REQUEST, 0), &[], &[20, 24]);
    let (stream, _) = listener.accept().expect("the device connected");
    rig.post_rx(&[4096]);
    rig.vsock.process_rx();
    let got = rig.received();
    assert_eq!(got.len(), 1, "one reply");
    assert_eq!(got[0].0.op, op::RESPONSE, "the connection was accepted: {:?}", got[0].0);
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream
}

#[test]
fn guest_payload_spanning_descriptors_reaches_the_host_intact() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    let mut host = connect(&mut rig);
    let layouts: &[&[u32]] =
        &[&[44, 4096, 4096, 1808], &[20, 24, 1, 9999], &[10_044], &[44, 0, 5000, 0, 5000], &[44, 65_536]];
    for (i, sizes) in layouts.iter().enumerate() {
        let len = sizes.iter().sum::<u32>() - PKT_HEADER_SIZE as u32;
        let payload = pattern(len as usize, i as u8);
        rig.send(guest_header(op::RW, len), &payload, sizes);
        let mut got = vec![0u8; payload.len()];
        host.read_exact(&mut got).expect("payload at the host");
        assert!(got == payload, "layout {sizes:?}: the host got different bytes");
    }
    assert_eq!(rig.vsock.metrics().bad_descriptors.load(Ordering::Relaxed), 0);
    assert_eq!(rig.vsock.metrics().protocol_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn host_data_fills_rx_chains_spanning_descriptors_in_order() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    let mut host = connect(&mut rig);
    let sent = pattern(50_000, 9);
    host.write_all(&sent).expect("host write");
    let mut got = Vec::new();
    for round in 0..200 {
        if got.len() >= sent.len() {
            break;
        }
        let layout: &[u32] = match round % 3 {
            0 => &[10, 34, 1000, 1, 3000],
            1 => &[4096],
            _ => &[44, 2048, 2048],
        };
        rig.post_rx(layout);
        rig.vsock.process_backend();
        for (header, data) in rig.received() {
            if header.op == op::RW {
                assert_eq!(header.len as usize, data.len(), "len matches the bytes written");
                got.extend_from_slice(&data);
            }
        }
    }
    assert!(got == sent, "the guest got {} bytes, different from the {} sent", got.len(), sent.len());
}

#[test]
fn rx_chains_without_payload_room_are_used_up_not_spun_on() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    let mut host = connect(&mut rig);
    host.write_all(b"hello").expect("host write");
    // Header-only chains while only payload is waiting: each is returned
    // (empty, counted) and the device does not loop.
    for _ in 0..3 {
        rig.post_rx(&[PKT_HEADER_SIZE as u32]);
    }
    for _ in 0..20 {
        rig.vsock.process_backend();
        if rig.vsock.metrics().bad_descriptors.load(Ordering::Relaxed) >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let empty = rig.received();
    assert_eq!(empty.len(), 3, "all three chains came back");
    assert!(empty.iter().all(|(_, bytes)| bytes.is_empty()), "nothing written into them: {empty:?}");
    assert_eq!(rig.vsock.metrics().bad_descriptors.load(Ordering::Relaxed), 3);
    // A proper buffer then gets the data.
    rig.post_rx(&[4096]);
    rig.vsock.process_backend();
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0.op, &got[0].1[..]), (op::RW, &b"hello"[..]));
}

#[test]
fn tx_buffers_come_back_in_batches_and_none_is_lost() {
    let mem = memory();
    let mut rig = Rig::new(&mem);
    let mut host = connect(&mut rig);
    let tx_used = |rig: &Rig<'_>| rig.txq.used().idx().load() as usize;
    let interrupts = |rig: &Rig<'_>| rig.vsock.metrics().interrupts.load(Ordering::Relaxed);
    // The connection request is held back, as is every packet below a batch.
    let (start_used, start_irqs) = (tx_used(&rig), interrupts(&rig));
    assert_eq!(start_used, 0, "the request waits for its batch");
    let mut sent = Vec::new();
    for i in 0..TX_USED_BATCH - 2 {
        let payload = pattern(100, i as u8);
        rig.send(guest_header(op::RW, 100), &payload, &[144]);
        sent.extend_from_slice(&payload);
    }
    // The data went to the host at once; the buffers were not returned yet.
    let mut got = vec![0u8; sent.len()];
    host.read_exact(&mut got).expect("payload at the host");
    assert!(got == sent, "the host got different bytes");
    assert_eq!(tx_used(&rig), 0, "{} buffers held", TX_USED_BATCH - 1);
    // One more completes the batch: all of it comes back together.
    rig.send(guest_header(op::RW, 1), b"x", &[45]);
    assert_eq!(tx_used(&rig), TX_USED_BATCH, "a full batch returned");
    assert_eq!(interrupts(&rig), start_irqs + 1, "one interrupt for the batch");
    // A lone packet comes back when the timer fires.
    rig.send(guest_header(op::RW, 1), b"y", &[45]);
    assert_eq!(tx_used(&rig), TX_USED_BATCH);
    std::thread::sleep(TX_USED_DELAY);
    rig.vsock.timer_fired();
    assert_eq!(tx_used(&rig), TX_USED_BATCH + 1, "the timer returned the held buffer");
    // A snapshot returns held buffers before it saves the queue.
    rig.send(guest_header(op::RW, 1), b"z", &[45]);
    let states = rig.vsock.quiesce().expect("quiesce");
    assert_eq!(tx_used(&rig), TX_USED_BATCH + 2, "quiesce returned the held buffer");
    assert_eq!(states[TXQ].next_used, states[TXQ].next_avail, "nothing in flight in the saved TX queue");
    let mut tail = [0u8; 3];
    host.read_exact(&mut tail).expect("the last bytes at the host");
    assert_eq!(&tail, b"xyz");
}
