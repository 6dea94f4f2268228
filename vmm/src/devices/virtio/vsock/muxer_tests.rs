//! Tests of the hybrid vsock muxer against real Unix sockets, with packets
//! given and taken as plain headers and byte buffers (no virtqueues).

use super::*;
use crate::devices::virtio::vsock::connection::BUF_ALLOC;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::thread::sleep;

const GUEST_CID: u64 = 3;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    muxer: HybridVsockMuxer,
    metrics: Arc<M>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("vsock.sock");
    let metrics = Arc::new(M::default());
    let mut muxer = HybridVsockMuxer::new(&path, GUEST_CID, metrics.clone()).expect("muxer");
    muxer.set_active(true);
    Fixture { _dir: dir, path, muxer, metrics }
}

/// Processes events until a packet is pending (or ~1 s passes).
fn pump(muxer: &mut HybridVsockMuxer) {
    for _ in 0..500 {
        muxer.process_events();
        if muxer.has_pending_rx() {
            return;
        }
        sleep(Duration::from_millis(2));
    }
}

fn recv(muxer: &mut HybridVsockMuxer) -> (PktHeader, Vec<u8>) {
    let mut buf = vec![0u8; 4096];
    let header = muxer.recv_pkt(Some(&VolatileSlice::from(&mut buf[..]))).expect("a packet for the guest");
    buf.truncate(header.len as usize);
    (header, buf)
}

fn guest_pkt(op: u16, src_port: u32, dst_port: u32, len: u32) -> PktHeader {
    PktHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 64 * 1024,
        fwd_cnt: 0,
    }
}

fn send(muxer: &mut HybridVsockMuxer, hdr: PktHeader, data: &[u8]) {
    let mut copy = data.to_vec();
    if copy.is_empty() {
        muxer.send_pkt(&hdr, None::<&VolatileSlice<'_, ()>>);
    } else {
        muxer.send_pkt(&hdr, Some(&VolatileSlice::from(&mut copy[..])));
    }
}

/// Connects a host client to guest port 1024 and completes the handshake.
fn host_connect(f: &mut Fixture) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(&f.path).expect("connect");
    client.write_all(b"CONNECT 1024\n").expect("write");
    pump(&mut f.muxer);
    let (request, _) = recv(&mut f.muxer);
    assert_eq!(
        (request.op, request.dst_port, request.dst_cid, request.src_cid),
        (op::REQUEST, 1024, GUEST_CID, HOST_CID)
    );
    assert!(request.src_port >= FIRST_LOCAL_PORT);
    send(&mut f.muxer, guest_pkt(op::RESPONSE, 1024, request.src_port, 0), &[]);
    let mut line = [0u8; 64];
    let n = client.read(&mut line).expect("OK line");
    assert_eq!(std::str::from_utf8(&line[..n]).expect("utf8"), format!("OK {}\n", request.src_port));
    (client, request.src_port)
}

#[test]
fn connect_lines_parse_strictly() {
    assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
    assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
    for bad in
        [&b"CONNECT"[..], b"CONNECT ", b"CONNECT -1", b"CONNECT 99999999999", b"connect 5", b"CONNECT 5 6", b"\xff\xfe"]
    {
        assert_eq!(parse_connect(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn host_initiated_stream_round_trip_and_close() {
    let mut f = fixture();
    let (mut client, local_port) = host_connect(&mut f);
    assert_eq!(f.muxer.connection_count(), 1);

    client.write_all(b"ping").expect("write");
    pump(&mut f.muxer);
    let (rw, data) = recv(&mut f.muxer);
    assert_eq!((rw.op, rw.src_port, rw.dst_port), (op::RW, local_port, 1024));
    assert_eq!(data, b"ping");
    assert_eq!(rw.buf_alloc, BUF_ALLOC);

    send(&mut f.muxer, guest_pkt(op::RW, 1024, local_port, 4), b"pong");
    let mut reply = [0u8; 4];
    client.read_exact(&mut reply).expect("pong");
    assert_eq!(&reply, b"pong");

    drop(client);
    pump(&mut f.muxer);
    // A Data item may first find nothing new; the EOF arrives as SHUTDOWN.
    let (shutdown, _) = recv(&mut f.muxer);
    assert_eq!((shutdown.op, shutdown.flags), (op::SHUTDOWN, SHUTDOWN_SEND));
    let mut close = guest_pkt(op::SHUTDOWN, 1024, local_port, 0);
    close.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    send(&mut f.muxer, close, &[]);
    let (rst, _) = recv(&mut f.muxer);
    assert_eq!(rst.op, op::RST);
    assert_eq!(f.muxer.connection_count(), 0);
}

#[test]
fn guest_close_half_closes_host_then_resets() {
    let mut f = fixture();
    let (mut client, local_port) = host_connect(&mut f);
    send(&mut f.muxer, guest_pkt(op::RW, 1024, local_port, 3), b"bye");
    let mut close = guest_pkt(op::SHUTDOWN, 1024, local_port, 0);
    close.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    send(&mut f.muxer, close, &[]);
    let mut all = Vec::new();
    client.read_to_end(&mut all).expect("data then EOF");
    assert_eq!(all, b"bye");
    let (rst, _) = recv(&mut f.muxer);
    assert_eq!(rst.op, op::RST);
    assert_eq!(f.metrics.conns_removed.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn guest_refusal_closes_the_host_client() {
    let mut f = fixture();
    let mut client = UnixStream::connect(&f.path).expect("connect");
    client.write_all(b"CONNECT 9\n").expect("write");
    pump(&mut f.muxer);
    let (request, _) = recv(&mut f.muxer);
    send(&mut f.muxer, guest_pkt(op::RST, 9, request.src_port, 0), &[]);
    let mut buf = [0u8; 8];
    assert_eq!(client.read(&mut buf).expect("EOF"), 0);
    assert!(!f.muxer.has_pending_rx(), "no RST answers an RST");
}

#[test]
fn guest_initiated_connection_reaches_the_port_socket() {
    let mut f = fixture();
    let mut port_path = f.path.clone().into_os_string();
    port_path.push("_5000");
    let listener = UnixListener::bind(&port_path).expect("bind port socket");
    send(&mut f.muxer, guest_pkt(op::REQUEST, 40000, 5000, 0), &[]);
    let (response, _) = recv(&mut f.muxer);
    assert_eq!((response.op, response.src_port, response.dst_port), (op::RESPONSE, 5000, 40000));
    let (mut host, _) = listener.accept().expect("accept");
    send(&mut f.muxer, guest_pkt(op::RW, 40000, 5000, 5), b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"hello");
}

#[test]
fn requests_to_closed_ports_and_unknown_streams_get_rst() {
    let mut f = fixture();
    send(&mut f.muxer, guest_pkt(op::REQUEST, 40000, 7777, 0), &[]);
    assert_eq!(recv(&mut f.muxer).0.op, op::RST);
    send(&mut f.muxer, guest_pkt(op::RW, 40001, 7777, 3), b"abc");
    let (rst, _) = recv(&mut f.muxer);
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (op::RST, 7777, 40001));
}

#[test]
fn spoofed_cid_and_wrong_type_are_rejected() {
    let mut f = fixture();
    let mut spoofed = guest_pkt(op::REQUEST, 1, 2, 0);
    spoofed.src_cid = 99;
    send(&mut f.muxer, spoofed, &[]);
    assert!(!f.muxer.has_pending_rx(), "spoofed packets are dropped silently");
    let mut dgram = guest_pkt(op::REQUEST, 1, 2, 0);
    dgram.type_ = 2;
    send(&mut f.muxer, dgram, &[]);
    assert_eq!(recv(&mut f.muxer).0.op, op::RST);
    assert_eq!(f.metrics.protocol_errors.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn credit_overrun_resets_the_connection() {
    let mut f = fixture();
    let (mut client, local_port) = host_connect(&mut f);
    // Fill the host socket until guest data has to be buffered, then exceed
    // the buffer we advertised.
    let chunk = vec![1u8; 64 * 1024];
    for _ in 0..64 {
        send(&mut f.muxer, guest_pkt(op::RW, 1024, local_port, chunk.len() as u32), &chunk);
        if f.muxer.connection_count() == 0 {
            break;
        }
    }
    assert_eq!(f.muxer.connection_count(), 0, "connection reset");
    assert!(f.metrics.protocol_errors.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    client.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
    let mut sink = Vec::new();
    let _ = client.read_to_end(&mut sink);
}

#[test]
fn bad_connect_line_and_inactive_device_refuse_clients() {
    let mut f = fixture();
    let mut client = UnixStream::connect(&f.path).expect("connect");
    client.write_all(b"HELLO\n").expect("write");
    client.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    for _ in 0..50 {
        f.muxer.process_events();
        sleep(Duration::from_millis(2));
    }
    let mut buf = [0u8; 4];
    assert_eq!(client.read(&mut buf).expect("EOF"), 0);

    f.muxer.set_active(false);
    let mut late = UnixStream::connect(&f.path).expect("connect");
    late.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    for _ in 0..50 {
        f.muxer.process_events();
        sleep(Duration::from_millis(2));
    }
    assert_eq!(late.read(&mut buf).expect("EOF"), 0);
}

#[test]
fn socket_path_checks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("v.sock");
    let metrics = Arc::new(M::default());
    let live = HybridVsockMuxer::new(&path, GUEST_CID, metrics.clone()).expect("first");
    let err = HybridVsockMuxer::new(&path, GUEST_CID, metrics.clone()).unwrap_err();
    assert!(matches!(err, MuxerError::InUse(_)), "{err}");
    drop(live);
    assert!(!path.exists(), "the socket file is removed on drop");

    let stale = UnixListener::bind(&path).expect("bind");
    drop(stale);
    HybridVsockMuxer::new(&path, GUEST_CID, metrics.clone()).expect("stale socket replaced");

    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").expect("write");
    let err = HybridVsockMuxer::new(&file, GUEST_CID, metrics.clone()).unwrap_err();
    assert!(matches!(err, MuxerError::NotASocket(_)), "{err}");
    let err = HybridVsockMuxer::new(Path::new("/nonexistent/dir/v.sock"), GUEST_CID, metrics).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/dir/v.sock"), "{err}");
}
