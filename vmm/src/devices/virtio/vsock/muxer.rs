//! The hybrid vsock backend: a Unix listener for host-initiated connections,
//! Unix sockets `<uds>_<port>` for guest-initiated ones, and the queue of
//! packets waiting for guest RX buffers.
//!
//! The muxer keeps its own epoll set (listener, connections, a timer), whose
//! fd the device registers in the VMM's event loop. A connection is polled
//! only for what it can act on (see `VsockConnection::wants`), so a stalled
//! stream never busy-loops the VMM thread.
//!
//! Firecracker's muxer is the model; it is not published as a crate.

use crate::devices::virtio::Counters;
use std::collections::{HashMap, VecDeque};
use std::io::{self, ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::connection::{ConnError, ConnKey, ConnState, VsockConnection};
use super::metrics::VsockMetrics as M;
use super::{op, PktHeader, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Connections (including handshakes in progress) per VM.
pub const MAX_CONNECTIONS: usize = 256;
/// Control packets queued for the guest before TX processing pauses.
pub const MAX_PENDING_CONTROL: usize = 1024;
/// Time a host client has to send `CONNECT <port>\n` (Firecracker's 2 s).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the guest has to answer a connection request. Firecracker allows
/// 2 s; a guest whose kernel is emulated (nested PVM), with five booting
/// beside it on two cores, took longer, and the host saw a refusal.
pub const GUEST_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest `CONNECT <port>` line.
const MAX_CONNECT_LINE: usize = 32;
/// First host-side port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
const TIMER_TICK: Duration = Duration::from_millis(250);

/// Errors creating the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// Another process serves the socket path.
    #[error("vsock socket {0} is in use by another process")]
    InUse(PathBuf),
    /// Something that is not a socket sits at the path.
    #[error("vsock socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The socket cannot be created.
    #[error("cannot create vsock socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// epoll or timerfd setup failed.
    #[error("vsock event setup: {0}")]
    Setup(io::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Listener,
    Timer,
    Handshake,
    Conn(ConnKey),
}

#[derive(Debug)]
enum RxItem {
    Ctrl { key: ConnKey, op: u16, flags: u32 },
    Rst { local_port: u32, peer_port: u32 },
    Data(ConnKey),
}

#[derive(Debug)]
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// See the module documentation.
#[derive(Debug)]
pub struct HybridVsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    targets: HashMap<RawFd, Target>,
    handshakes: HashMap<RawFd, Handshake>,
    conns: HashMap<ConnKey, VsockConnection>,
    rxq: VecDeque<RxItem>,
    next_local_port: u32,
    active: bool,
    metrics: Arc<M>,
}

/// Binds `path`, replacing a stale socket left by a dead process but never a
/// live one or a non-socket file.
fn bind_listener(path: &Path) -> Result<UnixListener, MuxerError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(MuxerError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(MuxerError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| MuxerError::Bind { path: path.to_path_buf(), source };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

impl HybridVsockMuxer {
    /// Listens on `uds_path` for host connections to guest `guest_cid`.
    pub fn new(uds_path: &Path, guest_cid: u64, metrics: Arc<M>) -> Result<Self, MuxerError> {
        let listener = bind_listener(uds_path)?;
        let epoll = Epoll::new().map_err(MuxerError::Setup)?;
        let timer = TimerFd::new().map_err(|e| MuxerError::Setup(io::Error::from_raw_os_error(e.errno())))?;
        let mut muxer = HybridVsockMuxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            timer,
            timer_armed: false,
            targets: HashMap::new(),
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            rxq: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            active: false,
            metrics,
        };
        let listener_fd = muxer.listener.as_raw_fd();
        let timer_fd = muxer.timer.as_raw_fd();
        muxer.watch(listener_fd, Target::Listener, EventSet::IN).map_err(MuxerError::Setup)?;
        muxer.watch(timer_fd, Target::Timer, EventSet::IN).map_err(MuxerError::Setup)?;
        Ok(muxer)
    }

    /// The fd to poll: readable when the muxer has events to process.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// The listening socket path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Number of live connections (for tests and metrics).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Starts (driver ready) or stops (device reset) serving the guest. Stop
    /// drops every connection and pending packet.
    pub fn set_active(&mut self, active: bool) {
        self.active = active;
        if !active {
            let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
            for key in keys {
                self.remove(key);
            }
            let fds: Vec<RawFd> = self.handshakes.keys().copied().collect();
            for fd in fds {
                self.drop_handshake(fd);
            }
            self.rxq.clear();
        }
    }

    /// Drops every connection and removes the listening socket file, for
    /// when the VMM exits without running destructors.
    pub fn close(&mut self) {
        self.set_active(false);
        let _ = std::fs::remove_file(&self.uds_path);
    }

    /// Whether packets wait for guest RX buffers.
    pub fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    /// Whether TX processing should pause until the guest drains RX.
    pub fn rx_backlogged(&self) -> bool {
        self.rxq.len() >= MAX_PENDING_CONTROL
    }

    fn watch(&mut self, fd: RawFd, target: Target, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, fd as u64))?;
        self.targets.insert(fd, target);
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd) {
        if self.targets.remove(&fd).is_some() {
            let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
    }

    /// Re-registers a connection for what it needs now.
    fn update_polling(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        let wants = conn.wants();
        let fd = conn.stream.as_raw_fd();
        let result = match (conn.registered, wants.is_empty()) {
            (Some(current), false) if current == wants => return,
            (Some(_), false) => self.epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(wants, fd as u64)),
            (None, false) => self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(wants, fd as u64)),
            (Some(_), true) => self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default()),
            (None, true) => return,
        };
        match result {
            Ok(()) => {
                conn.registered = (!wants.is_empty()).then_some(wants);
                if wants.is_empty() {
                    self.targets.remove(&fd);
                } else {
                    self.targets.insert(fd, Target::Conn(key));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, ?key, "vsock: cannot poll connection, resetting it");
                self.kill(key);
            }
        }
    }

    fn arm_timer(&mut self) {
        if !self.timer_armed && self.timer.reset(TIMER_TICK, Some(TIMER_TICK)).is_ok() {
            self.timer_armed = true;
        }
    }

    /// Handles everything the muxer's epoll reports.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let count = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "vsock: epoll_wait failed");
                return;
            }
        };
        for event in &events[..count] {
            let fd = event.fd();
            let set = event.event_set();
            match self.targets.get(&fd).copied() {
                Some(Target::Listener) => self.accept(),
                Some(Target::Timer) => self.expire(),
                Some(Target::Handshake) => self.read_handshake(fd),
                Some(Target::Conn(key)) => self.conn_event(key, set),
                None => {}
            }
        }
    }

    fn accept(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "vsock: accept failed");
                    return;
                }
            };
            if !self.active || self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
                // Dropping the stream closes it: the client sees EOF.
                M::inc(&self.metrics.conns_refused);
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if self.watch(fd, Target::Handshake, EventSet::IN).is_err() {
                continue;
            }
            self.handshakes
                .insert(fd, Handshake { stream, line: Vec::new(), deadline: Instant::now() + HANDSHAKE_TIMEOUT });
            self.arm_timer();
        }
    }

    fn drop_handshake(&mut self, fd: RawFd) {
        self.unwatch(fd);
        self.handshakes.remove(&fd);
    }

    /// Reads `CONNECT <port>\n` a byte at a time, so that nothing the client
    /// sends after the line is consumed here.
    fn read_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else { return };
        let mut byte = [0u8; 1];
        let line = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => return self.drop_handshake(fd),
                Ok(_) if byte[0] == b'\n' => break std::mem::take(&mut hs.line),
                Ok(_) if hs.line.len() < MAX_CONNECT_LINE => hs.line.push(byte[0]),
                Ok(_) => return self.drop_handshake(fd),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_handshake(fd),
            }
        };
        let Some(port) = parse_connect(&line) else {
            tracing::debug!(line = %String::from_utf8_lossy(&line), "vsock: bad CONNECT line");
            M::inc(&self.metrics.conns_refused);
            return self.drop_handshake(fd);
        };
        let Some(hs) = self.handshakes.remove(&fd) else { return };
        self.unwatch(fd);
        let local_port = self.allocate_local_port();
        let conn = VsockConnection::new_local(
            hs.stream,
            self.guest_cid,
            local_port,
            port,
            Instant::now() + GUEST_RESPONSE_TIMEOUT,
        );
        let key = conn.key();
        self.conns.insert(key, conn);
        self.rxq.push_back(RxItem::Ctrl { key, op: op::REQUEST, flags: 0 });
    }

    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = self.next_local_port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.conns.keys().any(|(local, _)| *local == port) {
                return port;
            }
        }
    }

    fn expire(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let stale: Vec<RawFd> = self.handshakes.iter().filter(|(_, h)| h.deadline <= now).map(|(fd, _)| *fd).collect();
        for fd in stale {
            M::inc(&self.metrics.conns_refused);
            self.drop_handshake(fd);
        }
        let unanswered: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| matches!(c.state, ConnState::LocalInit { deadline } if deadline <= now))
            .map(VsockConnection::key)
            .collect();
        for key in unanswered {
            M::inc(&self.metrics.conns_refused);
            self.kill(key);
        }
        let waiting =
            !self.handshakes.is_empty() || self.conns.values().any(|c| matches!(c.state, ConnState::LocalInit { .. }));
        if !waiting && self.timer_armed && self.timer.reset(Duration::ZERO, None).is_ok() {
            self.timer_armed = false;
        }
    }

    fn conn_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
            && !conn.rx_queued
        {
            conn.rx_queued = true;
            self.rxq.push_back(RxItem::Data(key));
        }
        if set.contains(EventSet::OUT) {
            if let Err(e) = conn.flush_to_host() {
                tracing::debug!(error = %e, ?key, "vsock: host stream write failed");
                return self.kill(key);
            }
            self.after_forward(key);
        }
        self.update_polling(key);
    }

    /// Credit update and close checks after guest data was forwarded.
    fn after_forward(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if conn.is_finished() {
            return self.kill(key);
        }
        if conn.needs_credit_update() && !conn.credit_update_queued {
            conn.credit_update_queued = true;
            self.rxq.push_back(RxItem::Ctrl { key, op: op::CREDIT_UPDATE, flags: 0 });
        }
    }

    fn remove(&mut self, key: ConnKey) -> Option<VsockConnection> {
        let conn = self.conns.remove(&key)?;
        self.unwatch(conn.stream.as_raw_fd());
        M::inc(&self.metrics.conns_removed);
        Some(conn)
    }

    /// Removes a connection and tells the guest with RST.
    fn kill(&mut self, key: ConnKey) {
        if self.remove(key).is_some() {
            self.rxq.push_back(RxItem::Rst { local_port: key.0, peer_port: key.1 });
        }
    }

    fn rst_header(&self, local_port: u32, peer_port: u32) -> PktHeader {
        PktHeader {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Default::default()
        }
    }

    /// Handles a packet the guest sent (TX queue).
    pub fn send_pkt<B: BitmapSlice>(&mut self, hdr: &PktHeader, data: Option<&VolatileSlice<'_, B>>) {
        M::inc(&self.metrics.tx_packets);
        M::add(&self.metrics.tx_bytes, u64::from(hdr.len));
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            // A guest spoofing its CID or addressing another VM: drop.
            M::inc(&self.metrics.protocol_errors);
            return;
        }
        if hdr.type_ != TYPE_STREAM {
            M::inc(&self.metrics.protocol_errors);
            if hdr.op != op::RST {
                self.rxq.push_back(RxItem::Rst { local_port: hdr.dst_port, peer_port: hdr.src_port });
            }
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        let Some(conn) = self.conns.get_mut(&key) else {
            match hdr.op {
                op::REQUEST => self.guest_connect(hdr),
                op::RST => {}
                _ => self.rxq.push_back(RxItem::Rst { local_port: key.0, peer_port: key.1 }),
            }
            return;
        };
        conn.update_peer_credit(hdr.buf_alloc, hdr.fwd_cnt);
        let result = match (hdr.op, conn.state) {
            (op::RESPONSE, ConnState::LocalInit { .. }) => {
                conn.state = ConnState::Established;
                M::inc(&self.metrics.conns_added);
                conn.ack_host_connect().map_err(ConnError::from)
            }
            (op::RW, ConnState::Established) if !conn.peer_shut_send => match data {
                Some(data) => conn.send_to_host(data),
                None => Ok(()),
            },
            (op::CREDIT_UPDATE, _) => Ok(()),
            (op::CREDIT_REQUEST, ConnState::Established) => {
                if !conn.credit_update_queued {
                    conn.credit_update_queued = true;
                    self.rxq.push_back(RxItem::Ctrl { key, op: op::CREDIT_UPDATE, flags: 0 });
                }
                Ok(())
            }
            (op::SHUTDOWN, ConnState::Established) => {
                conn.peer_shut_recv |= hdr.flags & SHUTDOWN_RCV != 0;
                conn.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                if conn.peer_shut_recv && conn.peer_shut_send {
                    // The guest closed its socket: forward what is left and
                    // acknowledge with RST once drained.
                    conn.local_eof = true;
                }
                conn.flush_to_host()
            }
            (op::RST, _) => {
                self.remove(key);
                return;
            }
            _ => {
                M::inc(&self.metrics.protocol_errors);
                return self.kill(key);
            }
        };
        if let Err(e) = result {
            if matches!(e, ConnError::CreditOverrun { .. }) {
                M::inc(&self.metrics.protocol_errors);
            }
            tracing::debug!(error = %e, ?key, "vsock: resetting connection");
            return self.kill(key);
        }
        self.after_forward(key);
        self.update_polling(key);
    }

    fn guest_connect(&mut self, hdr: &PktHeader) {
        let refuse = |muxer: &mut Self| {
            M::inc(&muxer.metrics.conns_refused);
            muxer.rxq.push_back(RxItem::Rst { local_port: hdr.dst_port, peer_port: hdr.src_port });
        };
        if self.conns.len() + self.handshakes.len() >= MAX_CONNECTIONS {
            return refuse(self);
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match UnixStream::connect(&path) {
            Ok(stream) if stream.set_nonblocking(true).is_ok() => stream,
            _ => return refuse(self),
        };
        let conn = VsockConnection::new_peer(stream, self.guest_cid, hdr);
        let key = conn.key();
        self.conns.insert(key, conn);
        M::inc(&self.metrics.conns_added);
        self.rxq.push_back(RxItem::Ctrl { key, op: op::RESPONSE, flags: 0 });
        self.update_polling(key);
    }

    /// Fills the next packet for the guest (RX queue) into `buf`, returning
    /// its header (whose `len` is the payload written), or None when nothing
    /// is pending.
    /// Each item pending on entry is looked at once: one that needs a data
    /// buffer when `buf` is None goes back to the queue for a later call.
    pub fn recv_pkt<B: BitmapSlice>(&mut self, buf: Option<&VolatileSlice<'_, B>>) -> Option<PktHeader> {
        for _ in 0..self.rxq.len() {
            let item = self.rxq.pop_front()?;
            let header = match item {
                RxItem::Rst { local_port, peer_port } => {
                    M::inc(&self.metrics.rst_sent);
                    Some(self.rst_header(local_port, peer_port))
                }
                RxItem::Ctrl { key, op, flags } => self.conns.get_mut(&key).map(|c| c.header(op, flags, 0)),
                RxItem::Data(key) => self.recv_data(key, buf),
            };
            if let Some(header) = header {
                M::inc(&self.metrics.rx_packets);
                M::add(&self.metrics.rx_bytes, u64::from(header.len));
                return Some(header);
            }
        }
        None
    }

    fn recv_data<B: BitmapSlice>(&mut self, key: ConnKey, buf: Option<&VolatileSlice<'_, B>>) -> Option<PktHeader> {
        let conn = self.conns.get_mut(&key)?;
        conn.rx_queued = false;
        if conn.state != ConnState::Established || conn.local_eof || conn.peer_shut_recv {
            self.update_polling(key);
            return None;
        }
        if conn.peer_credit() == 0 {
            let header = (!conn.credit_requested).then(|| {
                conn.credit_requested = true;
                conn.header(op::CREDIT_REQUEST, 0, 0)
            });
            self.update_polling(key);
            return header;
        }
        let Some(buf) = buf else {
            // An RX chain without room for data: keep the item for the next
            // chain (recv_pkt does not look at it again in this call).
            conn.rx_queued = true;
            self.rxq.push_back(RxItem::Data(key));
            return None;
        };
        match conn.recv_from_host(buf) {
            Ok(0) => {
                conn.local_eof = true;
                let header = conn.header(op::SHUTDOWN, SHUTDOWN_SEND, 0);
                if conn.is_finished() {
                    // The guest already shut its side: this is the final RST.
                    self.kill(key);
                    return None;
                }
                self.update_polling(key);
                Some(header)
            }
            Ok(n) => {
                // More may be waiting: come back after the other queued items.
                conn.rx_queued = true;
                let header = conn.header(op::RW, 0, n as u32);
                self.rxq.push_back(RxItem::Data(key));
                Some(header)
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                self.update_polling(key);
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, ?key, "vsock: host stream read failed");
                self.kill(key);
                None
            }
        }
    }
}

impl Drop for HybridVsockMuxer {
    fn drop(&mut self) {
        // The listening socket is ours; leave no stale file behind.
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Parses `CONNECT <port>` (Firecracker's hybrid vsock request line).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.strip_prefix("CONNECT ")?.trim_end_matches('\r');
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
