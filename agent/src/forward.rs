//! The port forwarder (vsock [`FORWARD_VSOCK_PORT`]): the host connects,
//! names a TCP port, and the agent relays that connection to
//! 127.0.0.1:<port> in the guest's network namespace, which is the pod's.
//! The shim uses it for `kubectl port-forward`, whose connections
//! containerd makes to localhost inside the pod's network namespace on the
//! host, where the pod's processes are not.
//!
//! [`FORWARD_VSOCK_PORT`]: kata_like_protocol::FORWARD_VSOCK_PORT

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Forwarded connections open at once; more are refused.
const MAX_CONNECTIONS: usize = 256;
/// How long the header line and the guest-side connect may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses the header line: a TCP port, 1..=65535.
fn parse_port(line: &str) -> Result<u16, String> {
    match line.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("bad port {:?}", line.trim())),
        Ok(port) => Ok(port),
    }
}

/// Reads the header line (at most 8 bytes before the newline).
fn read_header(conn: &mut std::fs::File) -> Result<String, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte) {
            Ok(0) => return Err("closed before the port line".into()),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) if line.len() < 8 => line.push(byte[0]),
            Ok(_) => return Err("port line too long".into()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Copies `from` into `to` until EOF, then half-closes `to`.
fn pump(mut from: impl Read, mut to: impl Write, close: impl FnOnce()) {
    let _ = std::io::copy(&mut from, &mut to);
    close();
}

fn handle(fd: OwnedFd) -> Result<(), String> {
    let mut conn = std::fs::File::from(fd);
    set_timeout(&conn, Some(SETUP_TIMEOUT));
    let port = read_header(&mut conn).and_then(|l| parse_port(&l));
    let target = port.and_then(|port| {
        TcpStream::connect_timeout(&(std::net::Ipv4Addr::LOCALHOST, port).into(), SETUP_TIMEOUT)
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))
    });
    let tcp = match target {
        Ok(tcp) => tcp,
        Err(e) => {
            let _ = conn.write_all(format!("ERR {e}\n").as_bytes());
            return Err(e);
        }
    };
    conn.write_all(b"OK\n").map_err(|e| e.to_string())?;
    set_timeout(&conn, None);
    let (tcp_r, conn_w) = (tcp.try_clone().map_err(|e| e.to_string())?, conn.try_clone().map_err(|e| e.to_string())?);
    let raw = conn_w.as_raw_fd();
    let back = std::thread::Builder::new().name("forward-out".into()).spawn(move || {
        pump(tcp_r, conn_w, || {
            // SAFETY: shutdown(2) on a descriptor this closure's writer
            // still owns.
            unsafe { libc::shutdown(raw, libc::SHUT_WR) };
        })
    });
    let tcp_w = tcp.try_clone().map_err(|e| e.to_string())?;
    pump(conn, tcp_w, || {
        let _ = tcp.shutdown(Shutdown::Write);
    });
    if let Ok(handle) = back {
        let _ = handle.join();
    }
    Ok(())
}

/// Sets SO_RCVTIMEO/SO_SNDTIMEO on a socket held as a File.
fn set_timeout(conn: &std::fs::File, timeout: Option<Duration>) {
    let tv = nix::sys::time::TimeVal::new(
        timeout.map_or(0, |t| t.as_secs() as i64),
        timeout.map_or(0, |t| i64::from(t.subsec_micros())),
    );
    let _ = nix::sys::socket::setsockopt(conn, nix::sys::socket::sockopt::ReceiveTimeout, &tv);
    let _ = nix::sys::socket::setsockopt(conn, nix::sys::socket::sockopt::SendTimeout, &tv);
}

/// Accepts forward connections on `listener` forever.
pub fn serve(listener: OwnedFd) {
    let open = Arc::new(AtomicUsize::new(0));
    crate::container::stdio::accept_forever(listener, "forward", move |fd| {
        if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::SeqCst);
            let _ = std::fs::File::from(fd).write_all(b"ERR too many forwarded connections\n");
            return;
        }
        let slot = open.clone();
        let spawned = std::thread::Builder::new().name("forward".into()).spawn(move || {
            if let Err(e) = handle(fd) {
                tracing::info!(error = %e, "port forward refused");
            }
            slot.fetch_sub(1, Ordering::SeqCst);
        });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::error!("cannot start a port-forward thread");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_line_is_checked() {
        assert_eq!(parse_port("8080\n"), Ok(8080));
        assert!(parse_port("0").unwrap_err().contains("bad port"));
        assert!(parse_port("65536").is_err());
        assert!(parse_port("http").is_err());
    }

    #[test]
    fn a_connection_is_relayed_to_a_local_port_both_ways() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = server.local_addr().expect("addr").port();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = server.accept().expect("accept");
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf).expect("write");
        });
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        let relay = std::thread::spawn(move || handle(OwnedFd::from(theirs)));
        let mut ours = ours;
        ours.write_all(format!("{port}\nhello").as_bytes()).expect("write");
        let mut reply = [0u8; 8];
        ours.read_exact(&mut reply).expect("read");
        assert_eq!(&reply, b"OK\nhello");
        ours.shutdown(Shutdown::Write).expect("shutdown");
        echo.join().expect("echo");
        relay.join().expect("relay").expect("relayed");

        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
        let relay = std::thread::spawn(move || handle(OwnedFd::from(theirs)));
        ours.write_all(b"1\n").expect("write");
        let mut reply = String::new();
        ours.read_to_string(&mut reply).expect("read");
        assert!(reply.starts_with("ERR connect 127.0.0.1:1"), "{reply}");
        assert!(relay.join().expect("relay").is_err());
    }
}
