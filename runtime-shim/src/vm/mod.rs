//! The host processes of a sandbox VM: the `kata-like-vmm` child, its
//! virtiofsd child, their host cgroup, supervision and logs. A
//! [`SandboxVm`] is one VM as seen from the host: the VMM process, its
//! state directory (vsock socket, VMM log, guest console), the agent
//! client, and with a shared directory its virtiofsd. The sandbox core
//! (`crate::sandbox`), the CLI and the tests start VMs here.
//!
//! * [`spec`]: what to boot ([`VmSpec`]), turned into the VMM's arguments
//!   (the contract type `VmmArgs`).
//! * [`child`]: starting children so they die with us; [`supervise`]:
//!   stopping them, telling a kill from outside.
//! * [`virtiofsd`]: the virtio-fs daemon; [`cgroup`]: their host cgroup.
//! * [`log`]: tails of the VMM log and guest console for error reports.
//!
//! The VMM is started with PR_SET_PDEATHSIG (from [`child`]'s launcher
//! thread) so it dies with the process that started it; dropping a
//! [`SandboxVm`] kills a VMM that is still running and removes the state
//! directory, so nothing is left behind on any path.

pub mod cgroup;
pub mod child;
pub mod log;
pub mod spec;
pub(crate) mod supervise;
pub mod virtiofsd;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kata_like_protocol::agent::{HealthResponse, RunProcessRequest, RunProcessResponse};
use kata_like_protocol::{AgentClient, AgentClientError};
use kata_like_vmm_contract::api;

pub use self::log::{console_excerpt, log_value, tail};
pub use self::spec::{Confinement, NetDevice, VmSpec, SHARED_TAG, VMM_TAP_FD};

/// How long an RPC other than RunProcess may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// The VMM's own directory in a VM's state directory: the one directory a
/// jailed VMM can write (vsock and control sockets, console, snapshots),
/// owned by the jail's user.
pub fn vmm_dir(state: &Path) -> PathBuf {
    state.join("vmm")
}

/// The VM's hybrid vsock socket (the agent is behind it).
pub fn vsock_path(state: &Path) -> PathBuf {
    vmm_dir(state).join("vsock.sock")
}

/// The guest console.
pub fn console_path(state: &Path) -> PathBuf {
    vmm_dir(state).join("console.log")
}

/// Creates the VMM's directory, owned by the jail's user when jailed,
/// and the empty directory its jail's root is mounted on.
fn prepare_vmm_dir(state: &Path, jail: Option<(u32, u32)>) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = vmm_dir(state);
    std::fs::create_dir_all(dir.join("root")).map_err(io_err(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", dir.display())))?;
    if let Some((uid, gid)) = jail {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(io_err(format!("chown {}", dir.display())))?;
    }
    Ok(dir)
}

/// Moves the directory `from` to `to` (a rename, or a copy when they are
/// on different file systems, keeping files sparse) and makes its files
/// ours: a snapshot the jailed VMM wrote must not stay writable by the
/// jail's user.
fn take_over_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_dir_all(to);
    match std::fs::rename(from, to) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::create_dir_all(to)?;
            for entry in std::fs::read_dir(from)? {
                let entry = entry?;
                copy_sparse(&entry.path(), &to.join(entry.file_name()))?;
            }
            std::fs::remove_dir_all(from)?;
        }
        other => other?,
    }
    // SAFETY: geteuid and getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    std::os::unix::fs::chown(to, Some(uid), Some(gid))?;
    for entry in std::fs::read_dir(to)? {
        std::os::unix::fs::chown(entry?.path(), Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Copies a file, leaving holes where the source has all-zero blocks.
fn copy_sparse(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut src = File::open(from)?;
    let mut dst = File::create(to)?;
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|&b| b == 0) {
            dst.seek(SeekFrom::Current(n as i64))?;
        } else {
            dst.write_all(&buf[..n])?;
        }
        len += n as u64;
    }
    dst.set_len(len)
}

/// The VMM's control socket in the state directory.
const API_SOCKET: &str = "api.sock";
/// How long a pause/resume/snapshot request may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(120);

/// `n` random bytes from the host, for a guest's entropy pool.
pub fn host_entropy(n: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// The host's wall clock in nanoseconds since the Unix epoch, for a guest.
pub fn realtime_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Gives a restored guest fresh entropy and the wall clock before anything
/// else: its RNG state and clock are the snapshot's, shared with every
/// other VM restored from it. The guest handles the VMM's vsock transport
/// reset at its first interrupt; should that overtake our first
/// connection, the second attempt is on a fresh one. Returns the connection
/// that worked.
fn refresh_restored(client: AgentClient, uds: &Path) -> Result<AgentClient, String> {
    let mut request = kata_like_protocol::agent::RestoredRequest::new();
    request.entropy = host_entropy(64).map_err(|e| format!("reading /dev/urandom: {e}"))?;
    request.realtime_ns = realtime_ns();
    match client.restored(&request) {
        Ok(()) => Ok(client),
        Err(first) => {
            tracing::debug!(error = %first, "Restored on the first connection failed; reconnecting");
            let again = AgentClient::connect(uds, RPC_TIMEOUT).map_err(|e| e.to_string())?;
            again.restored(&request).map(|()| again).map_err(|e| format!("{e} (first attempt: {first})"))
        }
    }
}

/// Errors of sandbox VMs. Each names what failed and, for boot failures,
/// carries the VMM's own reason and the tail of the guest console.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// An input file is missing.
    #[error("{what} {path} does not exist (run scripts/setup.sh, or pass --{what})")]
    Missing {
        /// Which input.
        what: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// Host-side I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The VM did not become ready.
    #[error("the VM did not become ready: {reason}\n--- VMM log (tail) ---\n{vmm_log}\n--- guest console (tail) ---\n{console}")]
    Boot {
        /// Why.
        reason: String,
        /// Last lines of the VMM log.
        vmm_log: String,
        /// Last lines of the guest console.
        console: String,
        /// The VMM or virtiofsd was killed from outside: the start was
        /// interrupted, not failed by what it was given.
        interrupted: bool,
    },
    /// virtiofsd could not be started.
    #[error("{0}")]
    Virtiofsd(String),
    /// The spec cannot be expressed as VMM arguments.
    #[error("bad VM arguments: {0}")]
    Arguments(String),
    /// The agent failed a request.
    #[error(transparent)]
    Agent(#[from] AgentClientError),
    /// The VM did not stop in time and was killed.
    #[error("the VM did not exit within {0:?} after shutdown; killed it")]
    ShutdownTimeout(Duration),
    /// The VMM refused or failed a pause/resume/snapshot request.
    #[error("VMM control request failed: {0}")]
    Control(String),
}

impl SandboxError {
    /// Whether a start failed because the VMM or virtiofsd was killed
    /// meanwhile, rather than because of what it was given.
    pub fn interrupted(&self) -> bool {
        matches!(self, SandboxError::Boot { interrupted: true, .. })
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// Timings of one boot, from the VMM log (microseconds since VMM start).
#[derive(Clone, Copy, Debug, Default)]
pub struct BootTimes {
    /// Until the first KVM_RUN.
    pub first_kvm_run_us: Option<u64>,
    /// Until the agent's boot-timer marker.
    pub boot_timer_us: Option<u64>,
    /// Until the host got the agent's health answer (host clock).
    pub agent_ready_us: u64,
}

/// A running sandbox VM.
#[derive(Debug)]
pub struct SandboxVm {
    child: Option<Child>,
    virtiofsd: Option<Child>,
    state_path: PathBuf,
    /// Removed on drop (kept with KATA_LIKE_KEEP_STATE set, for debugging).
    state: Option<tempfile::TempDir>,
    client: AgentClient,
    health: HealthResponse,
    times: BootTimes,
    /// Dropped (and removed) after the processes in it are stopped.
    _cgroup: Option<std::sync::Arc<cgroup::HostCgroup>>,
    /// Exit statuses once seen: the shim crate's SIGCHLD handler reaps our
    /// children, and a status it published can be taken only once.
    vmm_exit: Option<ExitStatus>,
    fsd_exit: Option<ExitStatus>,
}

/// Removes a VM's state directory, unless KATA_LIKE_KEEP_STATE is set: then
/// the VMM log and guest console stay behind for debugging.
fn keep_for_debugging(state: tempfile::TempDir) {
    if std::env::var_os("KATA_LIKE_KEEP_STATE").is_some() {
        eprintln!("kata-like: kept VM state in {}", state.keep().display());
    }
}

impl SandboxVm {
    /// Starts the VMM and waits until the agent answers a health check.
    pub fn start(spec: &VmSpec) -> Result<Self, SandboxError> {
        let inputs = match &spec.restore_from {
            Some(dir) => vec![("vmm", &spec.vmm), ("snapshot", dir)],
            None => vec![("vmm", &spec.vmm), ("kernel", &spec.kernel), ("initrd", &spec.initrd)],
        };
        for (what, path) in inputs {
            if !path.exists() {
                return Err(SandboxError::Missing { what, path: path.clone() });
            }
        }
        let (state, state_path) = match &spec.state_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
                (None, dir.clone())
            }
            None => {
                let parent = spec.state_parent.clone().unwrap_or_else(std::env::temp_dir);
                let state = tempfile::Builder::new()
                    .prefix("kata-like-vm-")
                    .tempdir_in(&parent)
                    .map_err(io_err(format!("creating a state directory in {}", parent.display())))?;
                let path = state.path().to_path_buf();
                (Some(state), path)
            }
        };
        let vmm_dir = prepare_vmm_dir(&state_path, spec.confinement.jail)?;
        let uds = vsock_path(&state_path);
        let console = console_path(&state_path);
        let vmm_log = state_path.join("vmm.log");
        let log_file = File::create(&vmm_log).map_err(io_err("creating the VMM log"))?;
        let fsd_socket = state_path.join("virtiofsd.sock");
        let mut virtiofsd = match &spec.shared {
            Some(shared) => {
                let log = state_path.join("virtiofsd.log");
                let child = virtiofsd::start(shared, &fsd_socket, &log, spec.cgroup.as_deref())
                    .map_err(SandboxError::Virtiofsd)?;
                Some(child)
            }
            None => None,
        };
        let ends = spec::HostEnds {
            vsock: uds.clone(),
            console: console.clone(),
            api: vmm_dir.join(API_SOCKET),
            jail_root: vmm_dir.join("root"),
            virtiofsd: virtiofsd.is_some().then(|| fsd_socket.clone()),
        };
        let args = match spec.vmm_args(&ends) {
            Ok(args) => args,
            Err(e) => {
                if let Some(mut fsd) = virtiofsd.take() {
                    supervise::stop(&mut fsd);
                }
                return Err(SandboxError::Arguments(e));
            }
        };
        let mut command = Command::new(&spec.vmm);
        command.args(args.to_argv()).stdin(Stdio::null()).stdout(Stdio::null()).stderr(log_file);
        if let Some(net) = &spec.net {
            let tap = std::os::fd::AsRawFd::as_raw_fd(net.tap.as_ref());
            // SAFETY: dup2 and fcntl are async-signal-safe; they place the
            // tap at VMM_TAP_FD without close-on-exec in the child only.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    if tap == VMM_TAP_FD {
                        let flags = libc::fcntl(tap, libc::F_GETFD);
                        if flags < 0 || libc::fcntl(tap, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    } else if libc::dup2(tap, VMM_TAP_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        command.args(&spec.vmm_args);
        if let Some(cgroup) = &spec.cgroup {
            cgroup.join_on_exec(&mut command);
        }
        let started = Instant::now();
        let mut child = match child::spawn_tied(command) {
            Ok(child) => child,
            Err(e) => {
                if let Some(mut fsd) = virtiofsd.take() {
                    supervise::stop(&mut fsd);
                }
                return Err(io_err(format!("starting {}", spec.vmm.display()))(e));
            }
        };

        // Exit statuses seen while waiting: a status is reaped only once.
        let (mut vmm_exit, mut fsd_exit) = (None, None);
        let ready = AgentClient::wait_ready(&uds, spec.boot_timeout, RPC_TIMEOUT, || {
            if let Some(fsd) = virtiofsd.as_mut() {
                if let Ok(Some(status)) = child::try_wait(fsd) {
                    fsd_exit = Some(status);
                    return Err(format!("virtiofsd exited ({status})"));
                }
            }
            match child::try_wait(&mut child) {
                Ok(Some(status)) => {
                    vmm_exit = Some(status);
                    Err(format!("the VMM exited ({status})"))
                }
                Ok(None) => Ok(()),
                Err(e) => Err(format!("cannot check the VMM process: {e}")),
            }
        })
        .map_err(|e| e.to_string())
        .and_then(|(client, health)| match spec.restore_from {
            None => Ok((client, health)),
            Some(_) => refresh_restored(client, &uds).map(|client| (client, health)),
        });
        let ready = ready.and_then(|ready| match &virtiofsd {
            Some(fsd) => supervise::tie_vmm_to_virtiofsd(child.id(), fsd.id()).map(|()| ready),
            None => Ok(ready),
        });
        let (client, health) = match ready {
            Ok(ready) => ready,
            Err(e) => {
                // The VMM killed from outside, or virtiofsd killed: nothing
                // the VM's inputs (a template, say) can be blamed for. A
                // virtiofsd that exited by itself followed its VMM (it
                // exits when the VMM hangs up): the VMM's status decides.
                use std::os::unix::process::ExitStatusExt;
                let vmm_exit = vmm_exit.or_else(|| supervise::exit_within(&mut child, supervise::VMM_EXIT_WAIT));
                let fsd_exit =
                    fsd_exit.or_else(|| virtiofsd.as_mut().and_then(|fsd| supervise::exit_within(fsd, Duration::ZERO)));
                let interrupted = vmm_exit.is_some_and(supervise::killed_from_outside)
                    || fsd_exit.is_some_and(|status| status.signal().is_some());
                supervise::stop(&mut child);
                if let Some(mut fsd) = virtiofsd.take() {
                    supervise::stop(&mut fsd);
                }
                let log = tail(&vmm_log, 8);
                let reason = log
                    .lines()
                    .find_map(|l| l.strip_prefix("kata-like-vmm: error: "))
                    .map(|why| format!("{e}; VMM: {why}"))
                    .unwrap_or(e);
                let console = tail(&console, 15);
                if let Some(state) = state {
                    keep_for_debugging(state);
                }
                return Err(SandboxError::Boot { reason, vmm_log: log, console, interrupted });
            }
        };
        let log = std::fs::read_to_string(&vmm_log).unwrap_or_default();
        let times = BootTimes {
            first_kvm_run_us: log_value(&log, "first KVM_RUN", "us_since_start"),
            boot_timer_us: log_value(&log, "boot-timer", "us_since_start"),
            agent_ready_us: started.elapsed().as_micros() as u64,
        };
        Ok(SandboxVm {
            child: Some(child),
            virtiofsd,
            vmm_exit: None,
            fsd_exit: None,
            state_path,
            state,
            client,
            health,
            times,
            _cgroup: spec.cgroup.clone(),
        })
    }

    /// The agent client.
    pub fn agent(&self) -> &AgentClient {
        &self.client
    }

    /// The agent's first health answer.
    pub fn health(&self) -> &HealthResponse {
        &self.health
    }

    /// Boot timings.
    pub fn boot_times(&self) -> BootTimes {
        self.times
    }

    /// The VMM's process ID.
    pub fn vmm_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the VMM (or virtiofsd) has exited, and how: a crashed VMM or
    /// a guest that reset on panic.
    pub fn exited(&mut self) -> Option<String> {
        if let Some(fsd) = self.virtiofsd.as_mut() {
            if let Some(status) = self.fsd_exit.or_else(|| child::try_wait(fsd).ok().flatten()) {
                self.fsd_exit = Some(status);
                return Some(format!("virtiofsd exited ({status})"));
            }
        }
        if let Some(status) = self.vmm_exit {
            return Some(format!("the VMM exited ({status})"));
        }
        match self.child.as_mut().map(child::try_wait) {
            Some(Ok(Some(status))) => {
                self.vmm_exit = Some(status);
                Some(format!("the VMM exited ({status})"))
            }
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(format!("cannot check the VMM: {e}")),
            None => Some("the VMM was stopped".into()),
        }
    }

    /// Stops the VMM and virtiofsd now (no guest shutdown); one that has
    /// exited is not signalled again (its PID may be reused).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.vmm_exit.is_none() {
                supervise::stop(&mut child);
            }
        }
        if let Some(mut fsd) = self.virtiofsd.take() {
            if self.fsd_exit.is_none() {
                supervise::stop(&mut fsd);
            }
        }
    }

    /// The state directory (socket, logs).
    pub fn state_dir(&self) -> &Path {
        &self.state_path
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(console_path(&self.state_path)).unwrap_or_default()
    }

    /// The VM's vsock socket.
    pub fn vsock_path(&self) -> PathBuf {
        vsock_path(&self.state_path)
    }

    /// Sends a request to the VMM's control socket.
    fn control(&self, request: &api::Request) -> Result<api::Response, SandboxError> {
        let socket = vmm_dir(&self.state_path).join(API_SOCKET);
        let response = api::call(&socket, request, CONTROL_TIMEOUT)
            .map_err(|e| SandboxError::Control(format!("{}: {e}", socket.display())))?;
        if response.ok {
            Ok(response)
        } else {
            Err(SandboxError::Control(response.error.unwrap_or_else(|| "no reason given".into())))
        }
    }

    /// Pauses the VM and writes a snapshot into `dir`; the VM stays paused
    /// until [`SandboxVm::resume`]. Returns (guest RAM bytes, bytes of RAM
    /// data written).
    ///
    /// A jailed VMM can only write below its own directory: the snapshot is
    /// written there and then moved to `dir`, owned by us.
    pub fn snapshot(&self, dir: &Path) -> Result<(u64, u64), SandboxError> {
        let staging = vmm_dir(&self.state_path).join("snapshot");
        let _ = std::fs::remove_dir_all(&staging);
        let request = api::Request::Snapshot { path: staging.clone() };
        let response = self.control(&request)?;
        take_over_dir(&staging, dir).map_err(io_err(format!(
            "moving the snapshot {} to {}",
            staging.display(),
            dir.display()
        )))?;
        Ok((response.ram_bytes.unwrap_or(0), response.data_bytes.unwrap_or(0)))
    }

    /// KVM's counters of the VM summed over its vCPUs (exits by kind,
    /// interrupts injected, ...), from the VMM's control socket.
    pub fn kvm_stats(&self) -> Result<std::collections::BTreeMap<String, u64>, SandboxError> {
        let response = self.control(&api::Request::Stats)?;
        response.stats.ok_or_else(|| SandboxError::Control("the VMM answered stats without any".into()))
    }

    /// Pauses the vCPUs.
    pub fn pause(&self) -> Result<(), SandboxError> {
        self.control(&api::Request::Pause).map(|_| ())
    }

    /// Resumes a paused (or snapshotted) VM.
    pub fn resume(&self) -> Result<(), SandboxError> {
        self.control(&api::Request::Resume).map(|_| ())
    }

    /// Runs a command in the guest and waits for it.
    pub fn run(
        &self,
        args: &[String],
        env: &[String],
        cwd: &str,
        stdin: &[u8],
    ) -> Result<RunProcessResponse, SandboxError> {
        let mut req = RunProcessRequest::new();
        req.args = args.to_vec();
        req.env = env.to_vec();
        req.cwd = cwd.to_string();
        req.stdin = stdin.to_vec();
        Ok(self.client.run_process(&req)?)
    }

    /// Asks the agent to power off and waits for the VMM to exit.
    pub fn shutdown(mut self, timeout: Duration) -> Result<ExitStatus, SandboxError> {
        self.client.shutdown()?;
        let Some(mut child) = self.child.take() else {
            return Err(SandboxError::Io {
                what: "VMM already reaped".into(),
                source: std::io::ErrorKind::Other.into(),
            });
        };
        let deadline = Instant::now() + timeout;
        loop {
            let status = match self.vmm_exit {
                Some(status) => Some(status),
                None => child::try_wait(&mut child).map_err(io_err("waiting for the VMM"))?,
            };
            if let Some(status) = status {
                if let Some(mut fsd) = self.virtiofsd.take() {
                    supervise::stop(&mut fsd);
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                supervise::stop(&mut child);
                return Err(SandboxError::ShutdownTimeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SandboxVm {
    fn drop(&mut self) {
        self.kill();
        if let Some(state) = self.state.take() {
            keep_for_debugging(state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_inputs_are_named_before_anything_starts() {
        let spec = VmSpec {
            vmm: PathBuf::from("/nonexistent/kata-like-vmm"),
            kernel: PathBuf::from("/nonexistent/vmlinux"),
            initrd: PathBuf::from("/nonexistent/initrd"),
            vcpus: 1,
            memory_mib: 128,
            extra_cmdline: None,
            boot_timeout: Duration::from_secs(1),
            state_parent: None,
            vmm_args: vec![],
            state_dir: None,
            shared: None,
            net: None,
            balloon: true,
            cgroup: None,
            restore_from: None,
            confinement: Confinement::default_for_this_process(),
        };
        let err = SandboxVm::start(&spec).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/kata-like-vmm"), "{err}");
    }

    #[test]
    fn a_moved_snapshot_keeps_its_holes() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().expect("tmp");
        let from = dir.path().join("memory");
        let mut file = File::create(&from).expect("create");
        file.write_all(b"head").expect("write");
        file.seek(SeekFrom::Start(8 << 20)).expect("seek");
        file.write_all(b"tail").expect("write");
        drop(file);
        let to = dir.path().join("copy");
        copy_sparse(&from, &to).expect("copy");
        let (a, b) = (std::fs::read(&from).expect("read"), std::fs::read(&to).expect("read"));
        assert_eq!(a, b);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&to).expect("stat").blocks();
        assert!(blocks < 1024, "{blocks} blocks: the 8 MiB of zeros stayed a hole");
    }
}
