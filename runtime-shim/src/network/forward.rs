//! `kubectl port-forward` for a pod in a VM.
//!
//! containerd's CRI plugin forwards by connecting to `localhost:<port>`
//! inside the pod's network namespace on the host. With the tc redirect
//! nothing of the pod listens there: its processes are in the guest. So, in
//! that namespace, a NAT rule redirects every TCP connection to 127.0.0.1
//! (except to our own port) to a listener of the shim; the shim reads the
//! port the client wanted (SO_ORIGINAL_DST) and relays the connection over
//! vsock to the agent's forwarder, which connects to that port on the
//! guest's 127.0.0.1 ([`kata_like_protocol::FORWARD_VSOCK_PORT`]).
//!
//! The rule is set with `iptables` (a process forked from the thread that
//! is in the namespace); no crate programs netfilter NAT rules that we
//! would rather depend on. It goes with the namespace when CNI deletes it.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_like_protocol::FORWARD_VSOCK_PORT;

/// How long the vsock handshake with the VMM and the agent may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Listens on 127.0.0.1 in the calling thread's network namespace and
/// redirects the namespace's other localhost TCP connections to it.
pub fn listen_here() -> Result<TcpListener, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("listen on 127.0.0.1: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port().to_string();
    let args = [
        "-w",
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-o",
        "lo",
        "-p",
        "tcp",
        "-d",
        "127.0.0.1",
        "!",
        "--dport",
        &port,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ];
    let mut iptables = std::process::Command::new("iptables");
    iptables.args(args);
    let out = crate::vm::child::output(iptables).map_err(|e| format!("iptables: {e}"))?;
    if !out.status.success() {
        return Err(format!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    log::info!("port-forward: localhost TCP in the pod namespace is redirected to 127.0.0.1:{port}");
    Ok(listener)
}

/// The port a redirected connection was made to.
fn original_port(conn: &TcpStream) -> Result<u16, String> {
    let addr = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::OriginalDst)
        .map_err(|e| format!("SO_ORIGINAL_DST: {e}"))?;
    Ok(u16::from_be(addr.sin_port))
}

/// Connects to the agent's forwarder for `port`; the relayed stream.
fn open_guest(uds: &Path, port: u16) -> Result<std::os::unix::net::UnixStream, String> {
    let mut stream = kata_like_protocol::hybrid_vsock::connect(uds, FORWARD_VSOCK_PORT, HANDSHAKE_TIMEOUT)
        .map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.write_all(format!("{port}\n").as_bytes()).map_err(|e| e.to_string())?;
    // Byte by byte, so no relayed data is consumed with the reply.
    let mut reply = Vec::new();
    let mut reader = BufReader::with_capacity(1, &stream);
    reader.read_until(b'\n', &mut reply).map_err(|e| e.to_string())?;
    let reply = String::from_utf8_lossy(&reply).trim().to_string();
    if reply != "OK" {
        return Err(format!("guest port {port}: {}", reply.strip_prefix("ERR ").unwrap_or(&reply)));
    }
    stream.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(stream)
}

fn relay(tcp: TcpStream, guest: std::os::unix::net::UnixStream) -> std::io::Result<()> {
    let (mut tcp_r, mut guest_w) = (tcp.try_clone()?, guest.try_clone()?);
    let up = std::thread::Builder::new().name("forward-up".into()).spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut guest_w);
        let _ = guest_w.shutdown(Shutdown::Write);
    })?;
    let (mut guest_r, mut tcp_w) = (guest, tcp);
    let _ = std::io::copy(&mut guest_r, &mut tcp_w);
    let _ = tcp_w.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}

/// Serves redirected connections from `listener` through the VMM's vsock
/// socket `uds`, until the listener fails (the shim exits).
pub fn serve(listener: TcpListener, uds: PathBuf) {
    let spawned = std::thread::Builder::new().name("port-forward".into()).spawn(move || {
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("port-forward accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let uds = uds.clone();
            let spawned = std::thread::Builder::new().name("forward".into()).spawn(move || {
                let guest = original_port(&conn).and_then(|port| open_guest(&uds, port));
                match guest {
                    Ok(guest) => {
                        if let Err(e) = relay(conn, guest) {
                            log::warn!("port-forward relay: {e}");
                        }
                    }
                    // Closing the connection tells the client.
                    Err(e) => log::warn!("port-forward: {e}"),
                }
            });
            if let Err(e) = spawned {
                log::warn!("port-forward thread: {e}");
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("port-forward disabled: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A stand-in for the VMM's hybrid vsock socket and the agent behind
    /// it: checks the handshake and the port line, answers `reply`, then
    /// echoes what follows.
    fn fake_guest(reply: &'static str) -> (tempfile::TempDir, std::thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().expect("tmp");
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("vsock.sock")).expect("bind");
        let guest = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut reader = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            reader.read_line(&mut line).expect("connect line");
            assert_eq!(line, format!("CONNECT {FORWARD_VSOCK_PORT}\n"));
            s.write_all(b"OK 1073741824\n").expect("ok");
            let mut port = String::new();
            reader.read_line(&mut port).expect("port line");
            s.write_all(reply.as_bytes()).expect("reply");
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            let _ = s.write_all(&rest);
            port
        });
        (dir, guest)
    }

    #[test]
    fn the_guest_side_is_asked_for_the_original_port_and_its_refusal_is_reported() {
        let (dir, guest) = fake_guest("ERR connect 127.0.0.1:8080: Connection refused\n");
        let err = open_guest(&dir.path().join("vsock.sock"), 8080).unwrap_err();
        assert_eq!(err, "guest port 8080: connect 127.0.0.1:8080: Connection refused");
        assert_eq!(guest.join().expect("guest"), "8080\n");
    }

    #[test]
    fn an_accepted_forward_relays_bytes() {
        let (dir, guest) = fake_guest("OK\n");
        let mut stream = open_guest(&dir.path().join("vsock.sock"), 80).expect("open");
        stream.write_all(b"ping").expect("write");
        stream.shutdown(Shutdown::Write).expect("shutdown");
        let mut echoed = String::new();
        stream.read_to_string(&mut echoed).expect("read");
        assert_eq!(echoed, "ping");
        assert_eq!(guest.join().expect("guest"), "80\n");
    }
}
