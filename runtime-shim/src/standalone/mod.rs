//! Standalone containers without containerd, runc-style:
//! `kata-like run --bundle DIR ID`, `state ID`, `kill ID [SIGNAL]`,
//! `delete [--force] ID`, `spec`.
//!
//! `run` is the monitor: it boots the sandbox VM (the same
//! [`Sandbox`] code as the shim), shares the bundle's rootfs over
//! virtio-fs, creates and starts the container with the caller's stdio,
//! forwards the signals it receives to the container, and exits with the
//! container's status once it has torn the VM down. The VMM and virtiofsd
//! are its children and die with it. `--detach` leaves a monitor running
//! in the background (its own session) and returns once the container
//! runs; the record then stays, `stopped`, until `delete`.
//!
//! Other invocations find the container through `<root>/<id>/state.json`
//! and reach its agent through the VM's vsock socket in `<root>/<id>/vm/`.

mod state;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kata_like_protocol::AgentClient;
use nix::sys::signal::{SigSet, Signal};

use crate::config::RuntimeConfig;
use crate::sandbox::io::{ProcessIo, StdioPaths};
use crate::sandbox::{rootfs, ContainerSpec, CoreError, Sandbox, TaskStatus};
pub use state::{check_id, Root, State, OCI_VERSION};

/// The default state root (runc uses /run/runc).
pub const DEFAULT_ROOT: &str = "/run/kata-like/standalone";
/// Environment variable through which a detached monitor reports to the
/// `kata-like run --detach` that started it (a pipe descriptor number).
const NOTIFY_FD_ENV: &str = "_KATA_LIKE_NOTIFY_FD";
/// How long output may keep flowing after the container exits (a
/// background process can hold the streams open).
const OUTPUT_GRACE: Duration = Duration::from_secs(5);
/// How long `delete --force` waits for the monitor after SIGKILLing the
/// container before it kills the monitor itself.
const FORCE_GRACE: Duration = Duration::from_secs(30);
/// The signals `run` forwards to the container's init.
const FORWARDED: [Signal; 6] =
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// Why a standalone command failed: the core's error, which the CLI turns
/// into its message and exit status.
pub type StandaloneError = CoreError;

/// The error for an ID that is taken.
fn exists(id: &str) -> CoreError {
    CoreError::Exists(format!("container {id} already exists"))
}

/// Where state lives and which runtime configuration to use.
#[derive(Clone, Debug)]
pub struct Options {
    /// The state root (`--root`).
    pub root: PathBuf,
    /// The runtime configuration file (`--config`); else the usual search.
    pub config: Option<PathBuf>,
}

impl Options {
    fn root(&self) -> Root {
        Root(self.root.clone())
    }
}

/// `kata-like run`: runs the bundle's container to completion and returns
/// its exit status (code, or 128 + signal). With `detach`, returns 0 once
/// it runs, leaving a background monitor.
pub fn run(opts: &Options, bundle: &Path, id: &str, detach: bool) -> Result<u32, StandaloneError> {
    check_id(id)?;
    if detach {
        return run_detached(opts, bundle, id);
    }
    let notify = notify_pipe();
    let result = monitor(opts, bundle, id, notify.is_some(), |state| {
        if let Some(fd) = &notify {
            let _ = writeln!(std::fs::File::from(fd.try_clone().map_err(|e| e.to_string())?), "ok {}", state.pid);
        }
        Ok(())
    });
    if let (Err(e), Some(fd)) = (&result, notify) {
        let _ = writeln!(std::fs::File::from(fd), "error {e}");
    }
    result
}

/// The notify pipe a detached monitor was started with, if any.
fn notify_pipe() -> Option<OwnedFd> {
    let fd: i32 = std::env::var(NOTIFY_FD_ENV).ok()?.parse().ok()?;
    std::env::remove_var(NOTIFY_FD_ENV);
    // SAFETY: the parent `kata-like run --detach` passed us this open pipe
    // descriptor for our exclusive use.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Starts `kata-like run` again as a background monitor in its own session
/// and waits for its report.
fn run_detached(opts: &Options, bundle: &Path, id: &str) -> Result<u32, StandaloneError> {
    let failed = |what: &str, e: std::io::Error| StandaloneError::Failed(format!("{what}: {e}"));
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failed("pipe", std::io::Error::from(e)))?;
    let exe = std::env::current_exe().map_err(|e| failed("finding our own executable", e))?;
    let mut command = Command::new(exe);
    command.arg("--root").arg(&opts.root);
    if let Some(config) = &opts.config {
        command.arg("--config").arg(config);
    }
    command.arg("run").arg("--bundle").arg(bundle).arg(id).env(NOTIFY_FD_ENV, write.as_raw_fd().to_string());
    let write_fd = write.as_raw_fd();
    // SAFETY: setsid and fcntl are async-signal-safe; the monitor gets its
    // own session (no terminal signals) and keeps the notify pipe open.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::fcntl(write_fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| failed("starting the monitor", e))?;
    drop(write);
    let mut line = String::new();
    let _ = BufReader::new(std::fs::File::from(read)).read_line(&mut line);
    match line.trim_end().split_once(' ') {
        Some(("ok", _)) => Ok(0),
        Some(("error", e)) => {
            let _ = child.wait();
            Err(StandaloneError::Failed(e.to_string()))
        }
        _ => {
            let status = child.wait().map_err(|e| failed("waiting for the monitor", e))?;
            Err(StandaloneError::Failed(format!("the monitor exited ({status}) before the container started")))
        }
    }
}

/// Undoes a partly made container directory on error.
struct Cleanup<'a> {
    dir: &'a Path,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.armed {
            rootfs::remove_dir_mounts(&self.dir.join(state::VM_DIR).join("shared"));
            rootfs::remove_tree(self.dir);
        }
    }
}

/// The monitor: create, start, wait, tear down. `started` is told once the
/// container runs. With `keep`, the stopped record stays for `delete`.
fn monitor(
    opts: &Options,
    bundle: &Path,
    id: &str,
    keep: bool,
    started: impl FnOnce(&State) -> Result<(), String>,
) -> Result<u32, StandaloneError> {
    let bundle = std::fs::canonicalize(bundle)
        .map_err(|e| StandaloneError::Invalid(format!("bundle {}: {e}", bundle.display())))?;
    let spec = ContainerSpec::read(&bundle)?;
    let terminal = spec.terminal;
    let rootfs_dir = spec.rootfs_in(&bundle);
    if !rootfs_dir.is_dir() {
        return Err(StandaloneError::Invalid(format!("rootfs {} is not a directory", rootfs_dir.display())));
    }
    let root = opts.root();
    let mut config =
        RuntimeConfig::load(opts.config.as_deref()).map_err(|e| StandaloneError::Invalid(e.to_string()))?;
    // Boot slots are the host's, shared with shims: under the configured
    // state root, not this container's directory.
    let boot_slots = config.state_root.join(crate::sandbox::boot_slots::DIR);
    config.state_root = root.dir(id);

    // The ID is claimed by creating its directory.
    std::fs::create_dir_all(&opts.root)
        .map_err(|e| StandaloneError::Failed(format!("state root {}: {e}", opts.root.display())))?;
    let dir = root.dir(id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists(id)),
        Err(e) => return Err(StandaloneError::Failed(format!("{}: {e}", dir.display()))),
    }
    let mut cleanup = Cleanup { dir: &dir, armed: true };
    let mut record = State {
        oci_version: OCI_VERSION.into(),
        id: id.into(),
        status: TaskStatus::Creating,
        pid: 0,
        bundle: bundle.display().to_string(),
        annotations: spec.annotations(),
        created: state::now_rfc3339(),
        monitor_pid: std::process::id(),
        exit_status: None,
    };
    root.save(&record)?;

    // Signals to forward are blocked before any thread starts, so they all
    // reach the forwarding thread (children get a clean mask, see child.rs).
    let mut forwarded = SigSet::empty();
    for s in FORWARDED {
        forwarded.add(s);
    }
    forwarded.add(Signal::SIGWINCH);
    forwarded.thread_block().map_err(|e| StandaloneError::Failed(format!("blocking signals: {e}")))?;

    let mut boot = spec.boot_options_sized(config.vcpus, config.memory_mib);
    boot.boot_slots = Some(boot_slots);
    let sandbox = Sandbox::start(&config, state::VM_DIR, boot, None)?;
    let stdio = StdioPaths { stdin: "fd://0".into(), stdout: "fd://1".into(), stderr: "fd://2".into(), terminal };
    let outcome = (|| {
        let (pid, io) = sandbox.add_container(id, &spec, &rootfs_dir, &stdio)?;
        record.pid = pid;
        record.status = TaskStatus::Created;
        root.save(&record)?;
        let _raw_tty = if terminal { terminal_raw_mode(&sandbox, id) } else { None };
        sandbox.start_container(id)?;
        record.status = TaskStatus::Running;
        root.save(&record)?;
        forward_signals(sandbox.uds().to_path_buf(), config.rpc_timeout(), id.to_string(), forwarded, terminal);
        started(&record).map_err(CoreError::Failed)?;
        let waited = sandbox.wait_process(id, "");
        drain(io);
        match waited {
            Ok(resp) => Ok(resp.exit_status),
            Err(e) => {
                let why = sandbox.exited().unwrap_or_else(|| e.to_string());
                Err(StandaloneError::Failed(format!(
                    "lost the container: {why}; guest console:\n{}",
                    sandbox.console_tail()
                )))
            }
        }
    })();
    sandbox.destroy();
    let status = outcome?;
    if keep {
        record.status = TaskStatus::Stopped;
        record.exit_status = Some(status);
        root.save(&record)?;
        cleanup.armed = false;
    }
    Ok(status)
}

/// Waits for the output streams to drain (bounded).
fn drain(mut io: ProcessIo) {
    match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(rt) => rt.block_on(io.wait_output(OUTPUT_GRACE)),
        Err(e) => tracing::warn!(error = %e, "cannot wait for the output to drain"),
    }
    io.close_stdin();
}

/// Forwards the blocked signals to the container's init for as long as the
/// process lives (SIGWINCH resizes its terminal).
fn forward_signals(uds: PathBuf, rpc_timeout: Duration, id: String, set: SigSet, terminal: bool) {
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let client = match AgentClient::connect(&uds, rpc_timeout) {
            Ok(c) => c,
            Err(e) => return tracing::warn!(error = %e, "signals will not be forwarded"),
        };
        while let Ok(signal) = set.wait() {
            let sent = if signal == Signal::SIGWINCH {
                if !terminal {
                    continue;
                }
                let (w, h) = window_size().unwrap_or((80, 24));
                client.resize_tty(&id, "", w, h)
            } else {
                client.signal_process(&id, "", signal as u32, false)
            };
            if let Err(e) = sent {
                tracing::warn!(?signal, error = %e, "cannot forward the signal");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the signal forwarding thread");
    }
}

/// The size of the terminal on our stdin, if it is one.
fn window_size() -> Option<(u32, u32)> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
    let r = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then(|| (u32::from(ws.ws_col), u32::from(ws.ws_row)))
}

/// Restores the terminal's settings when dropped.
struct RawTty(nix::sys::termios::Termios);

impl Drop for RawTty {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.0);
    }
}

/// For a terminal container on an interactive terminal: raw mode (the
/// guest's pty does the line discipline) and the current window size.
fn terminal_raw_mode(sandbox: &Sandbox, id: &str) -> Option<RawTty> {
    use nix::sys::termios;
    let saved = termios::tcgetattr(std::io::stdin()).ok()?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(std::io::stdin(), termios::SetArg::TCSANOW, &raw).ok()?;
    if let Some((w, h)) = window_size() {
        let _ = sandbox.client().resize_tty(id, "", w, h);
    }
    Some(RawTty(saved))
}

/// `kata-like state`: the container's OCI state.
pub fn state(opts: &Options, id: &str) -> Result<State, StandaloneError> {
    opts.root().load(id)
}

/// `kata-like kill`: sends `signal` to the container's init (or with `all`
/// to all its processes).
pub fn kill(opts: &Options, id: &str, signal: Signal, all: bool) -> Result<(), StandaloneError> {
    let root = opts.root();
    let record = root.load(id)?;
    if record.status != TaskStatus::Created && record.status != TaskStatus::Running {
        return Err(CoreError::WrongState(format!("container {id} is not running")));
    }
    let config = RuntimeConfig::load(opts.config.as_deref()).map_err(|e| StandaloneError::Invalid(e.to_string()))?;
    let uds = crate::vm::vsock_path(&root.vm_dir(id));
    let client = AgentClient::connect(&uds, config.rpc_timeout())
        .map_err(|e| StandaloneError::Failed(format!("cannot reach the agent of {id}: {e}")))?;
    client.signal_process(id, "", signal as u32, all).map_err(CoreError::Agent)
}

/// `kata-like delete`: removes a stopped container's record; with `force`
/// kills a running one first (its monitor then tears the VM down).
pub fn delete(opts: &Options, id: &str, force: bool) -> Result<(), StandaloneError> {
    let root = opts.root();
    let record = root.load(id)?;
    if record.status != TaskStatus::Stopped {
        if !force {
            return Err(CoreError::WrongState(format!(
                "container {id} is still running (kill it first, or delete --force)"
            )));
        }
        if let Err(e) = kill(opts, id, Signal::SIGKILL, true) {
            tracing::warn!(error = %e, "SIGKILL through the agent failed; stopping the monitor");
        }
        let deadline = Instant::now() + FORCE_GRACE;
        while state::monitor_alive(record.monitor_pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if state::monitor_alive(record.monitor_pid) {
            // Its VMM and virtiofsd die with it (PDEATHSIG).
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(record.monitor_pid as i32), Signal::SIGKILL);
        }
    }
    let dir = root.dir(id);
    rootfs::remove_dir_mounts(&root.vm_dir(id).join("shared"));
    rootfs::remove_tree(&dir);
    if dir.exists() {
        return Err(StandaloneError::Failed(format!("{} could not be removed (see the log)", dir.display())));
    }
    Ok(())
}

/// `kata-like spec`: writes a default `config.json` (runc's defaults,
/// without a terminal, running `sh`) into `bundle`.
pub fn spec(bundle: &Path) -> Result<PathBuf, StandaloneError> {
    let path = bundle.join("config.json");
    if path.exists() {
        return Err(CoreError::Exists(format!("{} already exists", path.display())));
    }
    let mut spec = oci_spec::runtime::Spec::default();
    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(false));
    }
    spec.save(&path).map_err(|e| StandaloneError::Failed(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// Parses a signal given as a name (`TERM`, `SIGTERM`) or number.
pub fn parse_signal(s: &str) -> Result<Signal, StandaloneError> {
    let bad = || StandaloneError::Invalid(format!("unknown signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("TERM").ok(), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("sigkill").ok(), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("9").ok(), Some(Signal::SIGKILL));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn spec_writes_a_default_config_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = spec(dir.path()).expect("spec");
        let spec = oci_spec::runtime::Spec::load(&path).expect("load");
        assert_eq!(spec.process().as_ref().and_then(|p| p.terminal()), Some(false));
        assert!(matches!(super::spec(dir.path()), Err(StandaloneError::Exists(_))));
    }

    #[test]
    fn bad_bundles_are_named_and_leave_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = Options { root: dir.path().join("root"), config: None };
        let err = run(&opts, &dir.path().join("missing"), "c1", false).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::write(dir.path().join("config.json"), "{not json").expect("write");
        let err = run(&opts, dir.path(), "c1", false).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        spec_without_rootfs(dir.path());
        let err = run(&opts, dir.path(), "c1", false).unwrap_err();
        assert!(err.to_string().contains("rootfs"), "{err}");
        assert!(!opts.root.join("c1").exists());
        assert!(matches!(run(&opts, dir.path(), "../x", false), Err(StandaloneError::Invalid(_))));
    }

    fn spec_without_rootfs(dir: &Path) {
        std::fs::remove_file(dir.join("config.json")).expect("rm");
        spec(dir).expect("spec");
    }
}
