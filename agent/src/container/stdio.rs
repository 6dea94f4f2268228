//! Process stdio over vsock: one stream per stdio stream.
//!
//! The host opens a vsock connection to [`IO_VSOCK_PORT`] for each stream
//! it wants, names it in a first line (`<container> <exec> <stream>`), and
//! only then asks for the process. In pipe mode the vsock socket itself
//! becomes the process's fd 0/1/2, so output goes from the workload to the
//! host with no copy in the agent, back-pressure is vsock's credit flow
//! control, and EOF is the socket closing when the last holder exits. With
//! a terminal, the agent relays between the pty master and the streams.
//!
//! One stream per stdio stream (rather than multiplexing) keeps each one
//! independently flow-controlled: a process that floods stderr cannot
//! stall its stdout, and no framing layer sits on the data path.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Longest first line of a stream.
const MAX_HEADER: usize = 512;
/// How long a process creation waits for streams the host announced.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Which stdio stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// fd 0.
    Stdin,
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

impl StreamKind {
    fn parse(s: &str) -> Option<StreamKind> {
        match s {
            "stdin" => Some(StreamKind::Stdin),
            "stdout" => Some(StreamKind::Stdout),
            "stderr" => Some(StreamKind::Stderr),
            _ => None,
        }
    }
}

type Key = (String, String, StreamKind);

/// Streams connected by the host and not yet taken by a process.
#[derive(Debug, Default)]
pub struct IoHub {
    streams: Mutex<HashMap<Key, OwnedFd>>,
    arrived: Condvar,
}

/// Parses a stream's first line.
pub fn parse_header(line: &str) -> Result<Key, String> {
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(e), Some(s), None) if !c.is_empty() && !e.is_empty() => {
            let kind = StreamKind::parse(s).ok_or_else(|| format!("unknown stream {s:?}"))?;
            Ok((c.to_string(), e.to_string(), kind))
        }
        _ => Err(format!("malformed stream header {line:?}")),
    }
}

fn read_header(fd: &OwnedFd) -> Result<String, String> {
    let mut file = std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_HEADER {
        match file.read(&mut byte) {
            Ok(0) => return Err("stream closed before its header".into()),
            Ok(_) if byte[0] == b'\n' => return String::from_utf8(line).map_err(|_| "header is not UTF-8".into()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("stream header too long".into())
}

impl IoHub {
    /// Registers a connection after reading its header; a bad header closes it.
    pub fn accept(&self, fd: OwnedFd) {
        let header = read_header(&fd).and_then(|line| parse_header(&line));
        match header {
            Ok(key) => {
                tracing::debug!(container = key.0, exec = key.1, stream = ?key.2, "stdio stream connected");
                crate::container::lock(&self.streams).insert(key, fd);
                self.arrived.notify_all();
            }
            Err(e) => tracing::warn!(error = %e, "stdio stream refused"),
        }
    }

    /// Takes the stream `kind` of (container, exec), waiting up to `timeout`.
    pub fn take(&self, container: &str, exec: &str, kind: StreamKind, timeout: Duration) -> Result<OwnedFd, String> {
        let key = (container.to_string(), exec.to_string(), kind);
        let deadline = Instant::now() + timeout;
        let mut streams = crate::container::lock(&self.streams);
        loop {
            if let Some(fd) = streams.remove(&key) {
                return Ok(fd);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(format!(
                    "the host announced {kind:?} for {container}/{exec} but did not connect it within {timeout:?}"
                ));
            }
            streams = self.arrived.wait_timeout(streams, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Drops streams of a container that no process took.
    pub fn forget(&self, container: &str) {
        crate::container::lock(&self.streams).retain(|k, _| k.0 != container);
    }

    /// Accepts connections on `listener` forever (one thread per header read,
    /// so a silent peer cannot block others).
    pub fn serve(self: &Arc<Self>, listener: OwnedFd) {
        let hub = self.clone();
        accept_forever(listener, "stdio", move |fd| {
            let hub = hub.clone();
            let _ = std::thread::Builder::new().name("stdio-header".into()).spawn(move || hub.accept(fd));
        });
    }
}

/// Accepts connections on `listener` on a thread `<name>-accept` forever,
/// handing each to `on_connection`; accept errors are logged and retried.
pub fn accept_forever(listener: OwnedFd, name: &str, mut on_connection: impl FnMut(OwnedFd) + Send + 'static) {
    let label = name.to_string();
    let spawned = std::thread::Builder::new().name(format!("{name}-accept")).spawn(move || loop {
        match nix::sys::socket::accept4(listener.as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new descriptor that we own.
            Ok(raw) => on_connection(unsafe { OwnedFd::from_raw_fd(raw) }),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, listener = label, "accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, listener = name, "cannot start a listener thread");
    }
}

/// Copies `from` to `to` until EOF or an error, then half-closes `to` for
/// sockets (so the host sees EOF) — used for the pty relay.
pub fn relay(from: OwnedFd, to: OwnedFd, name: &'static str, on_eof: impl FnOnce(&OwnedFd) + Send + 'static) {
    let spawned = std::thread::Builder::new().name(name.into()).spawn(move || {
        let mut reader = std::fs::File::from(from);
        let mut writer = match to.try_clone() {
            Ok(fd) => std::fs::File::from(fd),
            Err(e) => {
                tracing::error!(error = %e, name, "cannot duplicate a relay descriptor");
                return;
            }
        };
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if std::io::Write::write_all(&mut writer, &buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO: the pty's last slave fd closed (the process exited).
                Err(_) => break,
            }
        }
        on_eof(&to);
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, name, "cannot start an I/O relay");
    }
}

/// Opens the agent's stdio listener: vsock `port` in the guest, or a Unix
/// socket at `path` for host-mode tests.
pub fn listen(vsock_port: Option<u32>, unix_path: Option<&std::path::Path>) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{bind, listen as nix_listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    let (family, addr): (AddressFamily, Box<dyn nix::sys::socket::SockaddrLike>) = match (vsock_port, unix_path) {
        (Some(port), _) => {
            (AddressFamily::Vsock, Box::new(nix::sys::socket::VsockAddr::new(libc::VMADDR_CID_ANY, port)))
        }
        (None, Some(path)) => {
            let _ = std::fs::remove_file(path);
            (AddressFamily::Unix, Box::new(nix::sys::socket::UnixAddr::new(path).map_err(std::io::Error::from)?))
        }
        (None, None) => return Err(std::io::Error::other("no stdio listen address")),
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(fd.as_raw_fd(), addr.as_ref())?;
    nix_listen(&fd, Backlog::new(128).map_err(std::io::Error::from)?)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_name_the_stream() {
        assert_eq!(parse_header("c1 init stdout").expect("ok"), ("c1".into(), "init".into(), StreamKind::Stdout));
        assert!(parse_header("c1 init").unwrap_err().contains("malformed"));
        assert!(parse_header("c1 init stdfoo").unwrap_err().contains("stdfoo"));
        assert!(parse_header(" init stdin").is_err());
    }

    #[test]
    fn streams_are_taken_once_and_missing_ones_time_out() {
        use std::io::Write;
        let hub = IoHub::default();
        let (mut host, guest) = std::os::unix::net::UnixStream::pair().expect("pair");
        host.write_all(b"c1 e1 stdin\n").expect("write");
        hub.accept(OwnedFd::from(guest));
        hub.take("c1", "e1", StreamKind::Stdin, Duration::from_millis(10)).expect("taken");
        let err = hub.take("c1", "e1", StreamKind::Stdin, Duration::from_millis(10)).unwrap_err();
        assert!(err.contains("did not connect"), "{err}");
    }
}
