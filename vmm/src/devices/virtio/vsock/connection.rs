//! One vsock stream between a guest socket and a host Unix stream.
//!
//! Flow control follows the virtio-vsock credit scheme:
//! * guest → host: we advertise `BUF_ALLOC` and count in `fwd_cnt` the bytes
//!   written to the host stream. What the host stream does not take at once
//!   waits in `tx_buf`, which the guest's credit keeps below `BUF_ALLOC`; a
//!   guest that sends beyond its credit is reset.
//! * host → guest: we only read from the host stream as much as the guest's
//!   advertised buffer (`peer_buf_alloc - (rx_cnt - peer_fwd_cnt)`) allows,
//!   and stop polling the stream while there is no credit. The host process
//!   sees ordinary socket back-pressure.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};
use vmm_sys_util::epoll::EventSet;

use super::{op, PktHeader, HOST_CID, MAX_PKT_DATA, TYPE_STREAM};

/// Receive buffer we advertise to the guest, per connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once this many forwarded bytes were not yet reported.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

/// (host-side port, guest-side port).
pub type ConnKey = (u32, u32);

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    LocalInit {
        /// When to give up.
        deadline: Instant,
    },
    /// Data flows.
    Established,
}

/// Why a connection must be reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The guest sent more than the credit we gave it.
    #[error("guest sent {len} bytes with only {free} bytes of credit")]
    CreditOverrun {
        /// Bytes in the packet.
        len: usize,
        /// Credit left.
        free: usize,
    },
    /// The host stream failed.
    #[error("host stream: {0}")]
    Io(#[from] io::Error),
}

fn volatile_io(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// A connection's state and buffers.
#[derive(Debug)]
pub struct VsockConnection {
    /// The host end.
    pub stream: UnixStream,
    /// Life-cycle state.
    pub state: ConnState,
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    guest_cid: u64,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    tx_buf: VecDeque<u8>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    /// The guest will send no more (SHUTDOWN with SEND).
    pub peer_shut_send: bool,
    /// The guest will receive no more (SHUTDOWN with RCV).
    pub peer_shut_recv: bool,
    /// The host stream reached EOF and the guest was told.
    pub local_eof: bool,
    host_write_shut: bool,
    /// A `Data` item for this connection is in the muxer's RX queue.
    pub rx_queued: bool,
    /// A credit update for this connection is in the muxer's RX queue.
    pub credit_update_queued: bool,
    /// We asked the guest for credit and wait for its answer.
    pub credit_requested: bool,
    /// What the muxer's epoll currently watches for (None: not registered).
    pub registered: Option<EventSet>,
}

impl VsockConnection {
    /// A host-initiated connection waiting for the guest's RESPONSE.
    pub fn new_local(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32, deadline: Instant) -> Self {
        Self::new(stream, guest_cid, local_port, peer_port, ConnState::LocalInit { deadline })
    }

    /// A guest-initiated connection, established once the host socket
    /// accepted; `request` carries the guest's initial credit.
    pub fn new_peer(stream: UnixStream, guest_cid: u64, request: &PktHeader) -> Self {
        let mut conn = Self::new(stream, guest_cid, request.dst_port, request.src_port, ConnState::Established);
        conn.update_peer_credit(request.buf_alloc, request.fwd_cnt);
        conn
    }

    fn new(stream: UnixStream, guest_cid: u64, local_port: u32, peer_port: u32, state: ConnState) -> Self {
        VsockConnection {
            stream,
            state,
            local_port,
            peer_port,
            guest_cid,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_shut_send: false,
            peer_shut_recv: false,
            local_eof: false,
            host_write_shut: false,
            rx_queued: false,
            credit_update_queued: false,
            credit_requested: false,
            registered: None,
        }
    }

    /// The muxer's key for this connection.
    pub fn key(&self) -> ConnKey {
        (self.local_port, self.peer_port)
    }

    /// Records the guest's buffer space from any packet it sent.
    pub fn update_peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes we may still send to the guest.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest data waiting for the host stream.
    pub fn tx_pending(&self) -> usize {
        self.tx_buf.len()
    }

    /// Whether enough forwarded bytes went unreported to send a credit update.
    pub fn needs_credit_update(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
    }

    /// A header from us to the guest for this connection; records the credit
    /// we report and, for RW, the bytes sent.
    pub fn header(&mut self, op: u16, flags: u32, len: u32) -> PktHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        if op == op::RW {
            self.rx_cnt += Wrapping(len);
        }
        if op == op::CREDIT_UPDATE {
            self.credit_update_queued = false;
        }
        PktHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Forwards guest data to the host stream, buffering what it does not
    /// take now.
    pub fn send_to_host<B: BitmapSlice>(&mut self, data: &VolatileSlice<'_, B>) -> Result<(), ConnError> {
        let free = BUF_ALLOC as usize - self.tx_buf.len();
        if data.len() > free {
            return Err(ConnError::CreditOverrun { len: data.len(), free });
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            written = match self.stream.write_volatile(data) {
                Ok(n) => n,
                Err(e) => {
                    let e = volatile_io(e);
                    if e.kind() != io::ErrorKind::WouldBlock {
                        return Err(e.into());
                    }
                    0
                }
            };
            self.fwd_cnt += Wrapping(written as u32);
        }
        if written < data.len() {
            let rest = data.subslice(written, data.len() - written).map_err(|e| io::Error::other(e.to_string()))?;
            let mut copy = vec![0u8; rest.len()];
            rest.copy_to(&mut copy[..]);
            self.tx_buf.extend(copy);
        }
        Ok(())
    }

    /// Writes buffered guest data to the host stream; after the guest's
    /// SHUTDOWN(SEND) and once drained, half-closes the host stream.
    pub fn flush_to_host(&mut self) -> Result<(), ConnError> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if self.tx_buf.is_empty() && self.peer_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            // The host may already have closed its end; nothing to tell then.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Reads host data into an RX buffer, within the guest's credit.
    /// Ok(0) is end of stream.
    pub fn recv_from_host<B: BitmapSlice>(&mut self, buf: &VolatileSlice<'_, B>) -> io::Result<usize> {
        let max = buf.len().min(self.peer_credit() as usize).min(MAX_PKT_DATA as usize);
        let mut window = buf.subslice(0, max).map_err(|e| io::Error::other(e.to_string()))?;
        loop {
            match self.stream.read_volatile(&mut window) {
                Ok(n) => return Ok(n),
                Err(e) => {
                    let e = volatile_io(e);
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Sends the hybrid vsock acknowledgement to the host client.
    pub fn ack_host_connect(&mut self) -> io::Result<()> {
        // A fresh socket's send buffer always takes these few bytes.
        self.stream.write_all(format!("OK {}\n", self.local_port).as_bytes())
    }

    /// Both directions are done and nothing is left to forward.
    pub fn is_finished(&self) -> bool {
        self.state == ConnState::Established && self.local_eof && self.peer_shut_send && self.tx_buf.is_empty()
    }

    /// The epoll events this connection needs now.
    pub fn wants(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.state != ConnState::Established {
            return set;
        }
        if !self.rx_queued && !self.local_eof && !self.peer_shut_recv && self.peer_credit() > 0 {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn pair() -> (VsockConnection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        let request =
            PktHeader { src_port: 5000, dst_port: 52, buf_alloc: 1000, op: op::REQUEST, ..Default::default() };
        (VsockConnection::new_peer(ours, 3, &request), theirs)
    }

    #[test]
    fn credit_accounting_wraps() {
        let (mut conn, _peer) = pair();
        assert_eq!(conn.peer_credit(), 1000);
        conn.header(op::RW, 0, 600);
        assert_eq!(conn.peer_credit(), 400);
        conn.update_peer_credit(1000, 600);
        assert_eq!(conn.peer_credit(), 1000);
        conn.rx_cnt = Wrapping(u32::MAX - 10);
        conn.peer_fwd_cnt = Wrapping(u32::MAX - 10);
        conn.header(op::RW, 0, 100);
        assert_eq!(conn.peer_credit(), 900, "counters wrap around u32");
    }

    #[test]
    fn guest_data_reaches_the_host_and_counts_as_forwarded() {
        let (mut conn, mut peer) = pair();
        let mut data = *b"hello";
        conn.send_to_host(&VolatileSlice::from(&mut data[..])).expect("send");
        let mut got = [0u8; 5];
        peer.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello");
        assert_eq!(conn.header(op::CREDIT_UPDATE, 0, 0).fwd_cnt, 5);
    }

    #[test]
    fn overrunning_the_credit_is_an_error() {
        let (mut conn, _peer) = pair();
        let mut big = vec![0u8; BUF_ALLOC as usize + 1];
        let err = conn.send_to_host(&VolatileSlice::from(&mut big[..])).unwrap_err();
        assert!(matches!(err, ConnError::CreditOverrun { .. }));
    }

    #[test]
    fn a_full_host_socket_buffers_and_flushes_later() {
        let (mut conn, mut peer) = pair();
        let mut chunk = vec![7u8; 64 * 1024];
        let mut sent = 0;
        while conn.tx_pending() == 0 {
            conn.send_to_host(&VolatileSlice::from(&mut chunk[..])).expect("send");
            sent += chunk.len();
        }
        assert!(conn.wants().contains(EventSet::OUT));
        let mut received = 0;
        let mut buf = vec![0u8; 1 << 20];
        while received < sent {
            received += peer.read(&mut buf).expect("read");
            conn.flush_to_host().expect("flush");
        }
        assert_eq!(received, sent);
        assert_eq!(conn.tx_pending(), 0);
        assert!(conn.needs_credit_update());
    }

    #[test]
    fn host_reads_respect_guest_credit() {
        let (mut conn, mut peer) = pair();
        peer.write_all(&[1u8; 4000]).expect("write");
        let mut buf = vec![0u8; 4096];
        let n = conn.recv_from_host(&VolatileSlice::from(&mut buf[..])).expect("read");
        assert_eq!(n, 1000, "limited by the guest's buf_alloc");
        conn.header(op::RW, 0, n as u32);
        assert_eq!(conn.peer_credit(), 0);
        assert!(!conn.wants().contains(EventSet::IN), "no polling without credit");
    }

    #[test]
    fn shutdown_send_half_closes_the_host_stream_after_draining() {
        let (mut conn, mut peer) = pair();
        conn.peer_shut_send = true;
        conn.flush_to_host().expect("flush");
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).expect("eof"), 0);
        conn.local_eof = true;
        assert!(conn.is_finished());
    }
}
