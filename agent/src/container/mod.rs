//! Containers in the guest, with OCI runtime-spec semantics.
//!
//! * [`plan`]: spec → the steps of a container process; [`launch`]: the fork
//!   and the child that runs them.
//! * [`cgroup`], [`oom`]: the container's cgroup v2, statistics, OOM events.
//! * [`stdio`]: stdio streams over vsock; [`mounts`], [`paths`], [`caps`]:
//!   spec details.
//! * [`pod_pid`]: the pod's shared PID namespace and its PID 1;
//!   [`seccomp`]: `linux.seccomp` compiled to BPF.
//! * [`process`]: one container process and its exit; [`signal`]: signals
//!   to an init that has not installed its handlers yet.
//!
//! [`Containers`] is the registry the RPC service calls into.

pub mod caps;
pub mod cgroup;
pub mod launch;
pub mod mounts;
pub mod oom;
pub mod paths;
pub mod plan;
pub mod pod_pid;
pub mod process;
pub mod pts;
pub mod seccomp;
pub mod signal;
pub mod stdio;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use kata_like_protocol::agent::Stdio;
use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};

use self::cgroup::Cgroup;
use self::launch::{read_status, Status};
use self::process::Proc;
use self::stdio::{IoHub, StreamKind, ATTACH_TIMEOUT};
use crate::reaper::Reaper;

/// Locks a mutex, ignoring poisoning (a panicking handler is already
/// reported; the data stays usable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a container operation failed; mapped to ttrpc codes by the service.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// Bad request or spec.
    #[error("{0}")]
    Invalid(String),
    /// No such container or process.
    #[error("{0}")]
    NotFound(String),
    /// The container exists already.
    #[error("{0}")]
    Exists(String),
    /// Not possible in the current state.
    #[error("{0}")]
    State(String),
    /// The operation failed.
    #[error("{0}")]
    Failed(String),
}

use ContainerError::*;

/// Lifecycle state of a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Init forked, waiting for start.
    Created,
    /// Init exec'd.
    Running,
    /// Frozen.
    Paused,
    /// Init exited.
    Stopped,
}

struct Pending {
    start: OwnedFd,
    status: OwnedFd,
    steps: Arc<Vec<launch::Step>>,
}

/// A freshly forked container process.
struct Forked {
    pid: i32,
    exit: std::sync::mpsc::Receiver<crate::reaper::ExitState>,
    status: OwnedFd,
    steps: Arc<Vec<launch::Step>>,
}

/// One container.
pub struct Container {
    id: String,
    rootfs: PathBuf,
    cgroup: Cgroup,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    pending: Mutex<Option<Pending>>,
    state: Mutex<State>,
    /// When the init exec'd its program.
    started: Mutex<Option<std::time::Instant>>,
    /// `linux.seccomp` compiled: every process of the container gets it.
    seccomp: Vec<seccompiler::BpfProgram>,
    /// Its devpts instance ([`pts`]), if its spec mounts one.
    pts: Option<PathBuf>,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container").field("id", &self.id).field("init", &self.init.pid()).finish()
    }
}

impl Container {
    fn state(&self) -> State {
        let state = *lock(&self.state);
        if state != State::Created && self.init.exited().is_some() {
            return State::Stopped;
        }
        state
    }
}

/// Checks a container or exec id: what runc accepts.
pub fn validate_id(what: &str, id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && id != "."
        && id != "..";
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!("{what} {id:?} must be 1-128 characters of [A-Za-z0-9_.-]")))
    }
}

/// All containers of the sandbox.
#[derive(Debug)]
pub struct Containers {
    map: Mutex<HashMap<String, Arc<Container>>>,
    io: Arc<IoHub>,
    reaper: Arc<Reaper>,
    shared_root: PathBuf,
    cgroup_root: PathBuf,
    oom: Arc<oom::OomWatcher>,
}

impl Containers {
    /// A registry whose rootfs paths are relative to `shared_root` (where the
    /// shared file system is mounted) and cgroups live under `cgroup_root`.
    pub fn new(reaper: Arc<Reaper>, io: Arc<IoHub>, shared_root: PathBuf, cgroup_root: PathBuf) -> Self {
        Containers {
            map: Mutex::new(HashMap::new()),
            io,
            reaper,
            shared_root,
            cgroup_root,
            oom: oom::OomWatcher::start(),
        }
    }

    /// Where the shared file system is mounted.
    pub fn shared_root(&self) -> &Path {
        &self.shared_root
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        lock(&self.map).get(id).cloned().ok_or_else(|| NotFound(format!("container {id:?} does not exist")))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Proc>), ContainerError> {
        let c = self.get(id)?;
        if exec_id.is_empty() || exec_id == kata_like_protocol::INIT_EXEC_ID {
            let init = c.init.clone();
            return Ok((c, init));
        }
        let p = lock(&c.execs).get(exec_id).cloned();
        p.map(|p| (c, p)).ok_or_else(|| NotFound(format!("process {exec_id:?} of container {id:?} does not exist")))
    }

    /// The stdio fds of a new process, and with a terminal the pty master
    /// relays.
    fn stdio(
        &self,
        id: &str,
        exec_id: &str,
        stdio: &Stdio,
        pts: Option<&Path>,
    ) -> Result<(plan::StdioFds, Option<OwnedFd>), ContainerError> {
        let take = |kind| self.io.take(id, exec_id, kind, ATTACH_TIMEOUT).map_err(Failed);
        let null = || -> Result<OwnedFd, ContainerError> {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| Failed(format!("/dev/null: {e}")))
        };
        if stdio.terminal {
            let (master, slave, console) = pts::open(pts).map_err(Failed)?;
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| Failed(format!("dup: {e}")));
            if stdio.stdout {
                let out = take(StreamKind::Stdout)?;
                stdio::relay(dup(&master)?, out, "tty-out", |s| {
                    let _ = nix::sys::socket::shutdown(
                        std::os::fd::AsRawFd::as_raw_fd(s),
                        nix::sys::socket::Shutdown::Write,
                    );
                });
            }
            if stdio.stdin {
                let input = take(StreamKind::Stdin)?;
                let eof_master = dup(&master)?;
                stdio::relay(input, dup(&master)?, "tty-in", move |_| {
                    // Stdin EOF on a terminal: what ^D at the prompt does.
                    let _ = nix::unistd::write(&eof_master, &[4u8]);
                });
            }
            let fds = [dup(&slave)?, dup(&slave)?, slave];
            return Ok((plan::StdioFds { fds, console: Some(console) }, Some(master)));
        }
        let stream = |wanted: bool, kind| if wanted { take(kind) } else { null() };
        let fds = [
            stream(stdio.stdin, StreamKind::Stdin)?,
            stream(stdio.stdout, StreamKind::Stdout)?,
            stream(stdio.stderr, StreamKind::Stderr)?,
        ];
        Ok((plan::StdioFds { fds, console: None }, None))
    }

    fn rootfs(&self, rel: &str) -> Result<PathBuf, ContainerError> {
        if rel.is_empty() || rel.split('/').any(|c| c == "..") || rel.starts_with('/') {
            return Err(Invalid(format!(
                "rootfs {rel:?} must be a relative path without '..' in the shared directory"
            )));
        }
        let path = self.shared_root.join(rel);
        if !path.is_dir() {
            return Err(Invalid(format!(
                "rootfs {} is not a directory in the guest (is the shared file system mounted?)",
                path.display()
            )));
        }
        Ok(path)
    }

    /// Forks the child of `plan` (registered with the reaper), then closes
    /// the parent's copies of the descriptors the child inherited, so that
    /// the status pipe and stdio streams see EOF when the child is done.
    fn fork(&self, plan: plan::Plan, fds: plan::StdioFds) -> Result<Forked, ContainerError> {
        let steps = Arc::new(plan.steps);
        let ((pid, exit), status) =
            self.reaper.register(|| launch::fork(steps.clone(), plan.pid_ns)).map_err(Failed)?;
        drop(plan.keep);
        drop(fds);
        Ok(Forked { pid, exit, status, steps })
    }

    /// CreateContainer: builds the container and forks its init, which
    /// waits for [`Containers::start`]. Returns the init's guest PID.
    pub fn create(&self, id: &str, spec_json: &[u8], rootfs: &str, stdio: &Stdio) -> Result<u32, ContainerError> {
        validate_id("container id", id)?;
        if lock(&self.map).contains_key(id) {
            return Err(Exists(format!("container {id:?} already exists")));
        }
        let mut spec: Spec = kata_like_protocol::checks::oci_spec(spec_json).map_err(Invalid)?;
        let rootfs = self.rootfs(rootfs)?;
        let cgroup = Cgroup::create(&self.cgroup_root, id).map_err(Failed)?;
        let pts = match pts::prepare(id, &mut spec) {
            Ok(pts) => pts,
            Err(e) => {
                let _ = cgroup.remove();
                self.io.forget(id);
                return Err(Failed(e));
            }
        };
        let result = self.create_in(id, &spec, rootfs, cgroup.clone(), stdio, pts.clone());
        if result.is_err() {
            let _ = cgroup.remove();
            self.io.forget(id);
            if let Some(dir) = &pts {
                pts::release(dir);
            }
        }
        result
    }

    fn create_in(
        &self,
        id: &str,
        spec: &Spec,
        rootfs: PathBuf,
        cgroup: Cgroup,
        stdio: &Stdio,
        pts: Option<PathBuf>,
    ) -> Result<u32, ContainerError> {
        if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            cgroup.apply(resources).map_err(|e| Invalid(format!("linux.resources: {e}")))?;
        }
        if pod_pid::wanted(spec) {
            pod_pid::ensure(&self.reaper, Path::new(pod_pid::GUEST_POD_PID_NS)).map_err(Failed)?;
        }
        let procs = open_procs(&cgroup)?;
        let (start_r, start_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Failed(format!("pipe: {e}")))?;
        let (fds, tty) = self.stdio(id, kata_like_protocol::INIT_EXEC_ID, stdio, pts.as_deref())?;
        let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            Some(profile) => seccomp::compile(profile).map_err(Invalid)?,
            None => Vec::new(),
        };
        let plan = plan::init_plan(spec, &rootfs, &fds, procs, start_r, &seccomp).map_err(Invalid)?;
        let Forked { pid, exit, status, steps } = self.fork(plan, fds)?;
        match read_status(&status) {
            Status::Ready => {}
            Status::Failed { index, errno } => {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                return Err(Failed(format!(
                    "cannot create container {id}: {}",
                    launch::describe_failure(&steps, index, errno)
                )));
            }
            Status::Execed => return Err(Failed(format!("container {id}: init exited during set-up"))),
        }
        let init = Proc::new(pid, exit, tty, Some(cgroup.clone()));
        self.oom.watch(id, &cgroup);
        let container = Arc::new(Container {
            id: id.to_string(),
            rootfs,
            cgroup,
            init,
            execs: Mutex::new(HashMap::new()),
            pending: Mutex::new(Some(Pending { start: start_w, status, steps })),
            state: Mutex::new(State::Created),
            started: Mutex::new(None),
            seccomp,
            pts,
        });
        lock(&self.map).insert(id.to_string(), container);
        tracing::info!(id, pid, "container created");
        Ok(pid as u32)
    }

    /// StartContainer: lets the init exec the workload.
    pub fn start(&self, id: &str) -> Result<u32, ContainerError> {
        let c = self.get(id)?;
        let pending = lock(&c.pending).take().ok_or_else(|| State(format!("container {id} was already started")))?;
        nix::unistd::write(&pending.start, b"s").map_err(|e| Failed(format!("cannot signal the init: {e}")))?;
        drop(pending.start);
        match read_status(&pending.status) {
            Status::Execed => {
                *lock(&c.state) = State::Running;
                *lock(&c.started) = Some(std::time::Instant::now());
                tracing::info!(id, pid = c.init.pid(), "container started");
                Ok(c.init.pid() as u32)
            }
            Status::Failed { index, errno } => {
                *lock(&c.state) = State::Stopped;
                Err(Failed(format!(
                    "cannot start container {id}: {}",
                    launch::describe_failure(&pending.steps, index, errno)
                )))
            }
            Status::Ready => Err(Failed(format!("container {id}: unexpected status from init"))),
        }
    }

    /// ExecProcess: starts `process_json` (an OCI process) in the container.
    pub fn exec(&self, id: &str, exec_id: &str, process_json: &[u8], stdio: &Stdio) -> Result<u32, ContainerError> {
        validate_id("exec id", exec_id)?;
        if exec_id == kata_like_protocol::INIT_EXEC_ID {
            return Err(Invalid(format!("exec id {exec_id:?} is reserved for the container's init")));
        }
        let c = self.get(id)?;
        if c.state() != State::Running {
            return Err(State(format!("container {id} is {:?}, not running", c.state())));
        }
        if lock(&c.execs).contains_key(exec_id) {
            return Err(Exists(format!("exec {exec_id:?} already exists in container {id}")));
        }
        let process: OciProcess = kata_like_protocol::checks::oci_process(process_json).map_err(Invalid)?;
        let procs = open_procs(&c.cgroup)?;
        let (fds, tty) = self.stdio(id, exec_id, stdio, c.pts.as_deref())?;
        let plan = plan::exec_plan(&process, c.init.pid(), &c.rootfs, &fds, procs, &c.seccomp).map_err(Invalid)?;
        let Forked { pid, exit, status, steps } = self.fork(plan, fds)?;
        match read_status(&status) {
            Status::Execed => {}
            Status::Failed { index, errno } => {
                return Err(Failed(format!(
                    "cannot exec in container {id}: {}",
                    launch::describe_failure(&steps, index, errno)
                )))
            }
            Status::Ready => return Err(Failed("unexpected status from exec".into())),
        }
        lock(&c.execs).insert(exec_id.to_string(), Proc::new(pid, exit, tty, None));
        tracing::info!(id, exec_id, pid, "exec started");
        Ok(pid as u32)
    }

    /// SignalProcess.
    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), ContainerError> {
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| Invalid(format!("signal {signal} is not a valid signal")))?;
        let (c, p) = self.process(id, exec_id)?;
        if all {
            c.cgroup.signal_all(sig);
            return Ok(());
        }
        if p.exited().is_some() {
            return Err(NotFound(format!("process {} of container {id} already finished", p.pid())));
        }
        let sent = if Arc::ptr_eq(&p, &c.init) {
            let watched = p.clone();
            signal::to_init(p.pid(), sig, *lock(&c.started), move || watched.exited().is_some())
        } else {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid()), sig)
        };
        sent.map_err(|e| Failed(format!("kill {} {sig}: {e}", p.pid())))
    }

    /// WaitProcess: blocks until the process exits.
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<process::Exit, ContainerError> {
        let (_, p) = self.process(id, exec_id)?;
        Ok(p.wait())
    }

    /// Checks that the process exists.
    pub fn wait_target_exists(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        self.process(id, exec_id).map(|_| ())
    }

    /// ResizeTty.
    pub fn resize(&self, id: &str, exec_id: &str, width: u32, height: u32) -> Result<(), ContainerError> {
        let (_, p) = self.process(id, exec_id)?;
        p.resize(width, height).map_err(Failed)
    }

    /// PauseContainer / ResumeContainer.
    pub fn set_paused(&self, id: &str, paused: bool) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let state = c.state();
        match (paused, state) {
            (true, State::Running) | (false, State::Paused) => {}
            _ => return Err(State(format!("container {id} is {state:?}"))),
        }
        c.cgroup.freeze(paused).map_err(Failed)?;
        *lock(&c.state) = if paused { State::Paused } else { State::Running };
        Ok(())
    }

    /// ListPids.
    pub fn pids(&self, id: &str) -> Result<Vec<u32>, ContainerError> {
        Ok(self.get(id)?.cgroup.pids())
    }

    /// StatsContainer.
    pub fn stats(&self, id: &str) -> Result<kata_like_protocol::agent::StatsResponse, ContainerError> {
        Ok(self.get(id)?.cgroup.stats())
    }

    /// UpdateContainer.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        let resources: LinuxResources =
            serde_json::from_slice(resources_json).map_err(|e| Invalid(format!("invalid OCI resources: {e}")))?;
        c.cgroup.apply(&resources).map_err(Failed)
    }

    /// RemoveContainer: kills what is left, removes the cgroup.
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let c = self.get(id)?;
        self.oom.unwatch(id);
        c.cgroup.remove().map_err(Failed)?;
        if let Some(dir) = &c.pts {
            pts::release(dir);
        }
        lock(&self.map).remove(id);
        self.io.forget(id);
        tracing::info!(id, "container removed");
        Ok(())
    }

    /// GetOomEvent: the next container with an OOM kill.
    pub fn next_oom(&self) -> String {
        self.oom.next()
    }
}

fn open_procs(cgroup: &Cgroup) -> Result<OwnedFd, ContainerError> {
    let path = cgroup.path().join("cgroup.procs");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map(OwnedFd::from)
        .map_err(|e| Failed(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        validate_id("id", "abc-1.2_x").expect("ok");
        for bad in ["", "..", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id("container id", bad).unwrap_err().to_string().contains("container id"));
        }
    }

    #[test]
    fn unknown_capabilities_fail_spec_parsing_with_the_name() {
        let err = serde_json::from_str::<Spec>(
            r#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","capabilities":{"bounding":["CAP_NOPE"]}}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("CAP_NOPE"), "{err}");
    }
}
