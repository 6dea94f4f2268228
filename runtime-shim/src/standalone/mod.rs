//! The runc-compatible front end: containers without containerd, driven
//! through runc's command line by Docker (through containerd's runc shim),
//! podman (through conmon) or by hand: `create`, `start`, `state`, `kill`,
//! `delete`, `exec`, `ps`, `pause`, `resume`, `update`, `list`, `events`,
//! `features`, `run` and `spec`, with runc's flags and conventions.
//!
//! Each container has its own microVM, owned by its host process, the
//! monitor ([`monitor`]), whose PID `create` reports. The other commands
//! find the container through `<root>/<id>/state.json` and reach its agent
//! through the VM's vsock socket (or the monitor's control socket, for
//! `start`). `exec` runs its process from a host process of its own
//! ([`exec`]) that lives and ends as the guest process does.

mod console;
mod exec;
mod hooks;
mod monitor;
mod ops;
mod signals;
mod state;

use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::sandbox::{pod, rootfs, ContainerSpec, CoreError, GuestLink, TaskStatus};
pub use exec::{exec, exec_monitor, ExecArgs};
pub use monitor::monitor;
pub use ops::{events, features, list, pause, ps, resume, update, ListFormat, UpdateArgs};
pub use signals::exit_like;
pub use state::{check_id, now_rfc3339, Root, State, OCI_VERSION};

/// The default state root (runc uses /run/runc).
pub const DEFAULT_ROOT: &str = "/run/kata-like/standalone";
/// Environment variable through which a detached monitor reports to the
/// command that started it (a pipe descriptor number).
pub const NOTIFY_FD_ENV: &str = "_KATA_LIKE_NOTIFY_FD";
/// How long `delete --force` waits for the monitor after SIGKILLing the
/// container before it kills the monitor itself.
const FORCE_GRACE: Duration = Duration::from_secs(30);

/// Why a standalone command failed: the core's error, which the CLI turns
/// into its message and exit status.
pub type StandaloneError = CoreError;

/// Where state lives, which runtime configuration to use, and the global
/// flags a monitor started in the background is given again.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The state root (`--root`).
    pub root: PathBuf,
    /// The runtime configuration file (`--config`); else the usual search.
    pub config: Option<PathBuf>,
    /// `--systemd-cgroup`: `linux.cgroupsPath` is in systemd's
    /// `slice:prefix:name` form (the form is also recognised without it).
    pub systemd_cgroup: bool,
    /// Global flags to pass to a background monitor (`--log`, …).
    pub passed_on: Vec<std::ffi::OsString>,
}

impl Options {
    fn root(&self) -> Root {
        Root(self.root.clone())
    }

    /// `kata-like` with these global options, for a background process.
    fn self_command(&self) -> Result<Command, CoreError> {
        let exe = std::env::current_exe().map_err(|e| CoreError::Failed(format!("finding our own executable: {e}")))?;
        let mut command = Command::new(exe);
        command.arg("--root").arg(&self.root);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        if self.systemd_cgroup {
            command.arg("--systemd-cgroup");
        }
        command.args(&self.passed_on);
        Ok(command)
    }

    fn rpc_timeout(&self) -> Result<Duration, CoreError> {
        crate::config::RuntimeConfig::load(self.config.as_deref())
            .map(|c| c.rpc_timeout())
            .map_err(|e| CoreError::Invalid(e.to_string()))
    }
}

/// The error for an ID that is taken.
fn exists(id: &str) -> CoreError {
    CoreError::Exists(format!("container {id} already exists"))
}

/// `create`'s (and `run`'s) flags.
#[derive(Clone, Debug, Default)]
pub struct CreateArgs {
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Where to write the container's host PID.
    pub pid_file: Option<PathBuf>,
    /// Where to send the pty master of a terminal container.
    pub console_socket: Option<PathBuf>,
    /// Extra descriptors to pass (runc's `--preserve-fds`).
    pub preserve_fds: u32,
}

/// Undoes a partly made container directory on error.
struct Cleanup<'a> {
    dir: &'a Path,
    armed: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.armed {
            rootfs::remove_tree(self.dir);
        }
    }
}

/// Checks a bundle and claims `id`: its directory and a `creating` record.
fn claim(opts: &Options, args: &CreateArgs, id: &str, detached: bool) -> Result<(State, ContainerSpec), CoreError> {
    check_id(id)?;
    // A bad configuration fails here, not in the background monitor.
    crate::config::RuntimeConfig::load(opts.config.as_deref()).map_err(|e| CoreError::Invalid(e.to_string()))?;
    let bundle = std::fs::canonicalize(&args.bundle)
        .map_err(|e| CoreError::Invalid(format!("bundle {}: {e}", args.bundle.display())))?;
    let spec = ContainerSpec::read(&bundle)?;
    hooks::Hooks::read(&bundle).map_err(CoreError::Invalid)?;
    let rootfs_dir = spec.rootfs_in(&bundle);
    if !rootfs_dir.is_dir() {
        return Err(CoreError::Invalid(format!("rootfs {} is not a directory", rootfs_dir.display())));
    }
    if args.preserve_fds > 0 {
        return Err(CoreError::Invalid("--preserve-fds: host descriptors cannot be passed into a microVM".into()));
    }
    match (spec.terminal, &args.console_socket, detached) {
        (true, None, true) => {
            return Err(CoreError::Invalid(
                "cannot allocate a terminal (process.terminal) without --console-socket when detached".into(),
            ))
        }
        (false, Some(_), _) => {
            return Err(CoreError::Invalid("--console-socket given, but process.terminal is false".into()))
        }
        _ => {}
    }
    // (A namespace given by path, podman's, is in `netns`: the guest's copy
    // of the spec no longer names it.)
    if spec.netns.is_none() && !has_network_namespace(&spec.spec) {
        return Err(CoreError::Invalid(
            "the spec shares the host's network namespace (e.g. --network host): a microVM has its own network \
             stack and cannot join it; use a bridge network or --network none"
                .into(),
        ));
    }
    let cgroups_path = pod::cgroups_path(&spec.spec);
    std::fs::create_dir_all(&opts.root)
        .map_err(|e| CoreError::Failed(format!("state root {}: {e}", opts.root.display())))?;
    let root = opts.root();
    let dir = root.dir(id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists(id)),
        Err(e) => return Err(CoreError::Failed(format!("{}: {e}", dir.display()))),
    }
    let record = State {
        oci_version: OCI_VERSION.into(),
        id: id.into(),
        status: TaskStatus::Creating,
        pid: 0,
        bundle: bundle.display().to_string(),
        rootfs: rootfs_dir.display().to_string(),
        created: state::now_rfc3339(),
        owner: nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| nix::unistd::geteuid().to_string(), |u| u.name),
        annotations: spec.annotations(),
        monitor_pid: 0,
        monitor_start: 0,
        guest_pid: 0,
        vm_dir: PathBuf::new(),
        control: PathBuf::new(),
        cgroups_path,
        exit_status: None,
    };
    if let Err(e) = root.save(&record) {
        rootfs::remove_tree(&dir);
        return Err(e);
    }
    Ok((record, spec))
}

/// Whether the spec has a `network` namespace entry (with or without a
/// path); none means the host's.
fn has_network_namespace(spec: &serde_json::Value) -> bool {
    spec.pointer("/linux/namespaces")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|l| l.iter().any(|n| n.get("type").and_then(serde_json::Value::as_str) == Some("network")))
}

/// `create`: sets the container up in its VM without running its process
/// and returns once it is `created`, its monitor left running.
pub fn create(opts: &Options, id: &str, args: &CreateArgs) -> Result<(), CoreError> {
    spawn_monitor(opts, id, args, false)
}

/// `run`: create and start. In the foreground, this process is the monitor
/// and returns the container's exit status once its record is gone; with
/// `detach`, returns 0 once it runs, leaving the monitor and the record.
pub fn run(opts: &Options, id: &str, args: &CreateArgs, detach: bool) -> Result<u32, CoreError> {
    if detach {
        return spawn_monitor(opts, id, args, true).map(|()| 0);
    }
    claim(opts, args, id, false)?;
    let root = opts.root();
    let dir = root.dir(id);
    let _cleanup = Cleanup { dir: &dir, armed: true };
    if let Some(path) = &args.pid_file {
        write_pid_file(path, std::process::id())?;
    }
    let status = monitor(opts, id, true, None);
    let record = root.load(id);
    if let Ok(record) = &record {
        remove_container(opts, record);
    }
    status
}

/// Starts the monitor of `id` in the background and waits for its report.
fn spawn_monitor(opts: &Options, id: &str, args: &CreateArgs, start_now: bool) -> Result<(), CoreError> {
    let (record, _spec) = claim(opts, args, id, true)?;
    let root = opts.root();
    let dir = root.dir(id);
    let mut cleanup = Cleanup { dir: &dir, armed: true };
    let mut command = opts.self_command()?;
    command.arg("_monitor");
    if start_now {
        command.arg("--start");
    }
    command.arg(id);
    let (mut child, line) = spawn_reporting(command, args.console_socket.as_deref())?;
    if line == "ok" {
        if let Some(path) = &args.pid_file {
            write_pid_file(path, child.id())?;
        }
        cleanup.armed = false;
        // The monitor is reparented to our caller's subreaper when we exit.
        return Ok(());
    }
    let status = child.wait().map_err(|e| CoreError::Failed(format!("waiting for the monitor: {e}")))?;
    remove_container(opts, &root.load(id).unwrap_or(record));
    match line.split_once(' ') {
        Some(("error", e)) => Err(CoreError::Failed(e.to_string())),
        _ => Err(CoreError::Failed(format!("the monitor exited ({status}) before the container was created"))),
    }
}

/// Starts `command` (one of our background host processes) in its own
/// session, with a notify pipe, and with `console_socket` a pty whose
/// master goes to that socket and whose slave is the process's stdio and
/// controlling terminal (so a resize reaches it as SIGWINCH). Returns the
/// child and the line it reported: "ok", "error MESSAGE", or nothing when
/// it died first.
fn spawn_reporting(
    mut command: Command,
    console_socket: Option<&Path>,
) -> Result<(std::process::Child, String), CoreError> {
    let failed = |what: &str, e: std::io::Error| CoreError::Failed(format!("{what}: {e}"));
    let console = console_socket.map(console::send_to).transpose().map_err(CoreError::Failed)?;
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| failed("pipe", std::io::Error::from(e)))?;
    command.env(NOTIFY_FD_ENV, write.as_raw_fd().to_string());
    if let Some(console) = &console {
        let fd = |what| console.slave.try_clone().map(Stdio::from).map_err(|e| failed(what, e));
        command.stdin(fd("pty")?).stdout(fd("pty")?).stderr(fd("pty")?);
    }
    let write_fd = write.as_raw_fd();
    let ctty = console.is_some();
    // SAFETY: setsid, ioctl and fcntl are async-signal-safe: the process
    // gets its own session (no terminal signals of the caller's), the pty
    // as controlling terminal, and keeps the notify pipe across exec.
    unsafe {
        command.pre_exec(move || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if ctty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(write_fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| failed("starting a background process", e))?;
    drop(write);
    drop(console);
    let mut line = String::new();
    let _ = BufReader::new(std::fs::File::from(read)).read_line(&mut line);
    Ok((child, line.trim_end().to_string()))
}

/// Writes `pid` to `path` atomically, as runc does (a reader never sees an
/// empty file).
fn write_pid_file(path: &Path, pid: u32) -> Result<(), CoreError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| CoreError::Failed(format!("--pid-file {}: {e}", path.display())))
}

/// The notify pipe a background monitor was started with, if any.
pub fn notify_pipe() -> Option<std::fs::File> {
    let fd: i32 = std::env::var(NOTIFY_FD_ENV).ok()?.parse().ok()?;
    std::env::remove_var(NOTIFY_FD_ENV);
    // SAFETY: the command that started us passed us this open pipe
    // descriptor for our exclusive use.
    Some(std::fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }))
}

/// `start`: runs the created container's process.
pub fn start(opts: &Options, id: &str) -> Result<(), CoreError> {
    let record = opts.root().load(id)?;
    match record.status {
        TaskStatus::Created => monitor::request_start(&record),
        TaskStatus::Stopped => Err(CoreError::WrongState(format!("cannot start container {id}: it has stopped"))),
        status => Err(CoreError::WrongState(format!("cannot start container {id}: it is {}", status_name(status)))),
    }
}

/// The OCI name of a status.
fn status_name(status: TaskStatus) -> String {
    serde_json::to_value(status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// `state`: the container's OCI state.
pub fn state(opts: &Options, id: &str) -> Result<State, CoreError> {
    opts.root().load(id)
}

/// The agent link of a container that has a VM.
fn link(opts: &Options, record: &State) -> Result<GuestLink, CoreError> {
    GuestLink::connect(&record.vm_dir, opts.rpc_timeout()?)
}

/// `kill`: sends `signal` to the container's init (with `all`, to all its
/// processes).
pub fn kill(opts: &Options, id: &str, signal: Signal, all: bool) -> Result<(), CoreError> {
    let record = opts.root().load(id)?;
    match record.status {
        TaskStatus::Created | TaskStatus::Running | TaskStatus::Paused => {}
        _ => return Err(CoreError::WrongState(format!("container {id} is not running"))),
    }
    link(opts, &record)?.client().signal_process(id, "", signal as u32, all).map_err(CoreError::Agent)
}

/// `delete`: removes a stopped (or created) container; with `force` kills a
/// running one first. A running container without `force` is an error and
/// nothing changes.
pub fn delete(opts: &Options, id: &str, force: bool) -> Result<(), CoreError> {
    let root = opts.root();
    let record = match root.load(id) {
        // runc's --force: a container that is not there is deleted.
        Err(CoreError::NotFound(_)) if force => {
            rootfs::remove_tree(&root.dir(id));
            return Ok(());
        }
        other => other?,
    };
    match record.status {
        TaskStatus::Stopped => {}
        TaskStatus::Running | TaskStatus::Paused if !force => {
            return Err(CoreError::WrongState(format!(
                "cannot delete container {id} that is not stopped: {} (kill it first, or delete --force)",
                status_name(record.status)
            )))
        }
        TaskStatus::Running | TaskStatus::Paused => {
            if let Err(e) = kill(opts, id, Signal::SIGKILL, true) {
                tracing::warn!(error = %e, "SIGKILL through the agent failed; stopping the monitor");
            }
            let deadline = Instant::now() + FORCE_GRACE;
            while state::monitor_alive(record.monitor_pid, record.monitor_start) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Created (or being created): its process never ran; its VM goes
        // with its monitor, as runc's delete kills a created init.
        TaskStatus::Created | TaskStatus::Creating => {}
    }
    stop_monitor(&record);
    remove_container(opts, &record);
    let dir = root.dir(id);
    if dir.exists() {
        return Err(CoreError::Failed(format!("{} could not be removed (see the log)", dir.display())));
    }
    Ok(())
}

/// SIGKILLs the monitor if it still lives and waits until it is gone (its
/// VMM and virtiofsd die with it, PDEATHSIG).
fn stop_monitor(record: &State) {
    if !state::monitor_alive(record.monitor_pid, record.monitor_start) {
        return;
    }
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(record.monitor_pid as i32), Signal::SIGKILL);
    let deadline = Instant::now() + FORCE_GRACE;
    while state::monitor_alive(record.monitor_pid, record.monitor_start) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes everything of a container whose monitor is gone: what its VM
/// left (mounts, state directory, cgroup), its control socket, its record;
/// then runs its poststop hooks.
fn remove_container(opts: &Options, record: &State) {
    if !record.vm_dir.as_os_str().is_empty() {
        crate::sandbox::remove_leftover_state(&record.vm_dir);
    }
    if !record.cgroups_path.is_empty() {
        crate::vm::cgroup::remove_leftover(&record.cgroups_path);
    }
    if !record.control.as_os_str().is_empty() {
        let _ = std::fs::remove_file(&record.control);
    }
    rootfs::remove_tree(&opts.root().dir(&record.id));
    match hooks::Hooks::read(Path::new(&record.bundle)) {
        Ok(hooks) => hooks::run_logged("poststop", &hooks.poststop, record),
        Err(e) => tracing::debug!("no poststop hooks: {e}"),
    }
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
        let opts = Options { root: dir.path().join("root"), ..Default::default() };
        let at = |bundle: &Path| CreateArgs { bundle: bundle.to_path_buf(), ..Default::default() };
        let err = run(&opts, "c1", &at(&dir.path().join("missing")), false).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let err = create(&opts, "c1", &at(&dir.path().join("missing"))).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::write(dir.path().join("config.json"), "{not json").expect("write");
        let err = run(&opts, "c1", &at(dir.path()), false).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
        spec_without_rootfs(dir.path());
        let err = run(&opts, "c1", &at(dir.path()), false).unwrap_err();
        assert!(err.to_string().contains("rootfs"), "{err}");
        std::fs::create_dir(dir.path().join("rootfs")).expect("rootfs");
        let mut args = at(dir.path());
        args.preserve_fds = 1;
        let err = create(&opts, "c1", &args).unwrap_err();
        assert!(err.to_string().contains("--preserve-fds"), "{err}");
        args.preserve_fds = 0;
        args.console_socket = Some(dir.path().join("console.sock"));
        let err = create(&opts, "c1", &args).unwrap_err();
        assert!(err.to_string().contains("process.terminal is false"), "{err}");
        args.console_socket = None;
        let path = dir.path().join("config.json");
        let mut host_net: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        host_net["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]);
        std::fs::write(&path, host_net.to_string()).expect("write");
        let err = create(&opts, "c1", &args).unwrap_err();
        assert!(err.to_string().contains("--network host"), "{err}");
        assert!(!opts.root.join("c1").exists());
        assert!(matches!(run(&opts, "../x", &at(dir.path()), false), Err(StandaloneError::Invalid(_))));
        assert!(delete(&opts, "c1", true).is_ok(), "runc's delete --force of a missing container succeeds");
        for missing in [start(&opts, "c1"), kill(&opts, "c1", Signal::SIGTERM, false), delete(&opts, "c1", false)] {
            assert!(matches!(missing, Err(StandaloneError::NotFound(_))), "{missing:?}");
        }
    }

    fn spec_without_rootfs(dir: &Path) {
        std::fs::remove_file(dir.join("config.json")).expect("rm");
        spec(dir).expect("spec");
    }
}
