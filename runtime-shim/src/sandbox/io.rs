//! Process stdio between containerd's FIFOs and the guest: one hybrid-vsock
//! stream per stdio stream (see agent/src/container/stdio.rs for why), each
//! copied by a host thread with blocking I/O. Stdin EOF half-closes the
//! stream; output streams end when the guest side closes, and only then is
//! the FIFO closed, so nothing written before exit is lost.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kata_like_protocol::agent::Stdio;
use kata_like_protocol::{hybrid_vsock, IO_VSOCK_PORT};
use tokio::sync::oneshot;

/// How long connecting one stream may take (an emulated guest under load
/// can take many seconds to accept; the VMM waits up to 60 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes moved per read/write in the copy threads.
const COPY_BUFFER: usize = 64 * 1024;

/// The FIFOs (or files) containerd gave for a process.
#[derive(Clone, Debug, Default)]
pub struct StdioPaths {
    /// stdin FIFO or fd://N ("" = none).
    pub stdin: String,
    /// stdout FIFO, file:// URI or fd://N.
    pub stdout: String,
    /// stderr FIFO, file:// URI or fd://N.
    pub stderr: String,
    /// A terminal (stdout carries it; stderr unused).
    pub terminal: bool,
}

impl StdioPaths {
    /// The agent's view: which streams will be connected.
    pub fn agent_stdio(&self) -> Stdio {
        let mut s = Stdio::new();
        s.terminal = self.terminal;
        s.stdin = !self.stdin.is_empty();
        s.stdout = !self.stdout.is_empty();
        s.stderr = !self.stderr.is_empty() && !self.terminal;
        s
    }
}

/// Open copies of one process's stdio.
#[derive(Debug)]
pub struct ProcessIo {
    stdin: Option<UnixStream>,
    stdin_fifo: Option<PathBuf>,
    done: Vec<oneshot::Receiver<()>>,
}

/// `fd://N`: a duplicate of this process's descriptor N (the standalone
/// `kata-like run` passes its own stdio this way).
fn dup_fd(target: &str) -> Option<std::io::Result<File>> {
    let n: i32 = target.strip_prefix("fd://")?.parse().ok()?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) only reads the descriptor number; the
    // new descriptor is owned by the returned File alone.
    let fd = unsafe { libc::fcntl(n, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Some(Err(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Some(Ok(unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) }))
}

fn open_output(target: &str) -> std::io::Result<File> {
    if let Some(file) = dup_fd(target) {
        return file;
    }
    if let Some(path) = target.strip_prefix("file://") {
        return OpenOptions::new().create(true).append(true).open(path);
    }
    if target.starts_with("binary://") {
        return Err(std::io::Error::other("binary:// log URIs are not supported by kata-like"));
    }
    OpenOptions::new().write(true).open(target)
}

fn connect(uds: &Path, container: &str, exec: &str, stream: &str) -> Result<UnixStream, String> {
    let mut s = hybrid_vsock::connect(uds, IO_VSOCK_PORT, CONNECT_TIMEOUT)
        .map_err(|e| format!("connect {stream} of {container}/{exec} to the guest: {e}"))?;
    s.write_all(format!("{container} {exec} {stream}\n").as_bytes())
        .map_err(|e| format!("announce {stream} of {container}/{exec}: {e}"))?;
    Ok(s)
}

/// Copies until EOF with plain read/write calls.
///
/// Not `std::io::copy`: between a socket and a FIFO it uses splice(2), and
/// the kernel holds the FIFO's pipe lock while splice blocks reading the
/// socket. A silent container then keeps containerd's FIFO locked, and
/// every open or read of it (`ctr run -d` exiting, containerd's log copy)
/// hangs in uninterruptible sleep.
fn copy_unspliced(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn copy_out(mut from: UnixStream, target: String, name: &'static str) -> Result<oneshot::Receiver<()>, String> {
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("io-{name}"))
        .spawn(move || {
            match open_output(&target) {
                Ok(mut out) => {
                    if let Err(e) = copy_unspliced(&mut from, &mut out) {
                        log::warn!("{name} copy to {target} ended: {e}");
                    }
                }
                Err(e) => {
                    log::error!("cannot open {name} {target}: {e}");
                    // Drain so the guest is never blocked on a dead stream.
                    let _ = std::io::copy(&mut from, &mut std::io::sink());
                }
            }
            let _ = tx.send(());
        })
        .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
    Ok(rx)
}

fn copy_in(to: UnixStream, fifo: String) -> Result<(), String> {
    std::thread::Builder::new()
        .name("io-stdin".into())
        .spawn(move || {
            // Blocks until containerd's side has the FIFO open for writing;
            // `ProcessIo::close_stdin` unblocks it when nobody ever does.
            let input = dup_fd(&fifo).unwrap_or_else(|| OpenOptions::new().read(true).open(&fifo));
            match input {
                Ok(mut input) => {
                    let mut out = &to;
                    if let Err(e) = copy_unspliced(&mut input, &mut out) {
                        log::debug!("stdin copy ended: {e}");
                    }
                }
                Err(e) => log::error!("cannot open stdin {fifo}: {e}"),
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
        .map_err(|e| format!("cannot start the stdin thread: {e}"))?;
    Ok(())
}

impl ProcessIo {
    /// Connects every stream of `paths` to (container, exec) in the guest
    /// behind the VMM socket `uds` and starts copying.
    pub fn connect(uds: &Path, container: &str, exec: &str, paths: &StdioPaths) -> Result<ProcessIo, String> {
        let mut io = ProcessIo { stdin: None, stdin_fifo: None, done: Vec::new() };
        if !paths.stdin.is_empty() {
            let s = connect(uds, container, exec, "stdin")?;
            let keep = s.try_clone().map_err(|e| format!("dup stdin stream: {e}"))?;
            copy_in(s, paths.stdin.clone())?;
            io.stdin = Some(keep);
            io.stdin_fifo = Some(paths.stdin.clone().into());
        }
        if !paths.stdout.is_empty() {
            let s = connect(uds, container, exec, "stdout")?;
            io.done.push(copy_out(s, paths.stdout.clone(), "stdout")?);
        }
        if !paths.stderr.is_empty() && !paths.terminal {
            let s = connect(uds, container, exec, "stderr")?;
            io.done.push(copy_out(s, paths.stderr.clone(), "stderr")?);
        }
        Ok(io)
    }

    /// Ends stdin: the guest process reads EOF.
    pub fn close_stdin(&mut self) {
        if let Some(s) = self.stdin.take() {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        // Unblock a stdin thread still waiting in open(): open the FIFO's
        // write end ourselves and close it (it then reads EOF).
        if let Some(fifo) = self.stdin_fifo.take().filter(|f| !f.to_string_lossy().starts_with("fd://")) {
            let _ = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(fifo);
        }
    }

    /// Waits until every output stream is drained, at most `timeout` (a
    /// background process of an exec may hold the stream open).
    pub async fn wait_output(&mut self, timeout: Duration) {
        let all = futures_all(std::mem::take(&mut self.done));
        let _ = tokio::time::timeout(timeout, all).await;
    }
}

async fn futures_all(receivers: Vec<oneshot::Receiver<()>>) {
    for rx in receivers {
        let _ = rx.await;
    }
}

/// Shared handle to a process's I/O.
pub type SharedIo = Arc<Mutex<Option<ProcessIo>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// While the copy waits on a silent stream, the FIFO stays usable: a
    /// second reader can open it (splice would hold the pipe lock).
    #[test]
    fn silent_stream_does_not_lock_the_fifo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("out");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).expect("reader");
        let mut writer = OpenOptions::new().write(true).open(&fifo).expect("writer");
        let (guest, mut host) = UnixStream::pair().expect("pair");
        let copier = std::thread::spawn(move || copy_unspliced(&mut host, &mut writer));
        std::thread::sleep(Duration::from_millis(100));

        let (tx, rx) = mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).is_ok());
        });
        let opened = rx.recv_timeout(Duration::from_secs(5));
        // End the copy either way, so a failing run does not hang.
        (&guest).write_all(b"bye").expect("write");
        drop(guest);
        assert_eq!(opened, Ok(true), "a second open of the FIFO blocked while the copy waited");
        assert_eq!(copier.join().expect("copier").expect("copy"), 3);
        drop(reader);
    }
}
