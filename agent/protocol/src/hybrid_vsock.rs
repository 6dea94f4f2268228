//! Host side of the hybrid vsock handshake (Firecracker's protocol).
//!
//! The VMM exposes the guest's vsock device as a Unix socket. A host process
//! connects to it, writes `CONNECT <port>\n`, and reads `OK <host_port>\n`
//! once the guest accepted the connection on `<port>`; after that the Unix
//! stream carries the vsock stream's bytes.
//!
//! No crate implements the client half on its own (firecracker keeps it in
//! its test tree), so it is written here; it is a dozen lines.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest reply line we accept: "OK " + u32 + "\n".
const MAX_REPLY: usize = 32;

/// Why a hybrid vsock connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The Unix socket could not be reached.
    #[error("cannot connect to the VM's vsock socket {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        source: io::Error,
    },
    /// I/O on the socket failed during the handshake.
    #[error("vsock handshake on {path} failed: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The VMM closed the connection: nothing listens on the port in the guest
    /// (yet), or the VM is going away.
    #[error("vsock port {port} refused the connection (nothing listening in the guest yet?)")]
    Refused {
        /// The guest port.
        port: u32,
    },
    /// The VMM answered something other than `OK <n>`.
    #[error("unexpected vsock handshake reply {reply:?}")]
    BadReply {
        /// The reply line, lossily decoded.
        reply: String,
    },
}

/// Connects to guest vsock `port` through the VMM's Unix socket at `uds`.
///
/// `timeout` bounds each read and write of the handshake; the returned stream
/// has no timeouts set.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, HandshakeError> {
    let io_err = |source| HandshakeError::Io { path: uds.to_path_buf(), source };
    let mut stream =
        UnixStream::connect(uds).map_err(|source| HandshakeError::Connect { path: uds.to_path_buf(), source })?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).map_err(io_err)?;

    // Read byte by byte so that nothing after the newline is consumed: the
    // guest may start sending right after accepting.
    let mut reply = Vec::with_capacity(MAX_REPLY);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(HandshakeError::Refused { port }),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if reply.len() < MAX_REPLY => reply.push(byte[0]),
            Ok(_) => return Err(HandshakeError::BadReply { reply: String::from_utf8_lossy(&reply).into_owned() }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(HandshakeError::Refused { port }),
            Err(e) => return Err(io_err(e)),
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    match reply.strip_prefix("OK ").map(str::parse::<u32>) {
        Some(Ok(_)) => {}
        _ => return Err(HandshakeError::BadReply { reply }),
    }
    stream.set_read_timeout(None).map_err(io_err)?;
    stream.set_write_timeout(None).map_err(io_err)?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;
    use std::thread;

    fn serve(reply: &'static [u8]) -> (tempfile::TempDir, thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = UnixListener::bind(dir.path().join("v.sock")).expect("bind");
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut reader = io::BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).expect("read CONNECT");
            reader.get_mut().write_all(reply).expect("reply");
            line
        });
        (dir, handle)
    }

    #[test]
    fn handshake_ok_keeps_following_bytes() {
        let (dir, server) = serve(b"OK 1073741824\nhello");
        let mut stream = connect(&dir.path().join("v.sock"), 1024, Duration::from_secs(5)).expect("handshake");
        assert_eq!(server.join().expect("server"), "CONNECT 1024\n");
        let mut rest = [0u8; 5];
        stream.read_exact(&mut rest).expect("payload");
        assert_eq!(&rest, b"hello");
    }

    #[test]
    fn closed_connection_is_refused() {
        let (dir, server) = serve(b"");
        let err = connect(&dir.path().join("v.sock"), 7, Duration::from_secs(5)).unwrap_err();
        server.join().expect("server");
        assert!(matches!(err, HandshakeError::Refused { port: 7 }), "{err}");
    }

    #[test]
    fn garbage_reply_is_rejected() {
        let (dir, server) = serve(b"NOPE\n");
        let err = connect(&dir.path().join("v.sock"), 7, Duration::from_secs(5)).unwrap_err();
        server.join().expect("server");
        assert!(matches!(err, HandshakeError::BadReply { .. }), "{err}");
    }

    #[test]
    fn missing_socket_names_the_path() {
        let err = connect(Path::new("/nonexistent/v.sock"), 7, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/v.sock"), "{err}");
    }
}
