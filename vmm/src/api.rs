//! The VMM's control socket (`--api-sock`): pause, resume, snapshot.
//!
//! One JSON request per connection, one JSON line back:
//!
//! ```text
//! {"action":"pause"}                      -> {"ok":true,"state":"paused"}
//! {"action":"snapshot","path":"/dir"}     -> {"ok":true,"state":"paused","ram_bytes":..,"data_bytes":..,"ms":..}
//! {"action":"resume"}                     -> {"ok":true,"state":"running"}
//! {"action":"status"}                     -> {"ok":true,"state":"running"}
//! {"action":"stats"}                      -> {"ok":true,"state":"running","stats":{"exits":..,"io_exits":..,..}}
//! anything else                           -> {"ok":false,"error":"..."}
//! ```
//!
//! A snapshot pauses the VM if it is running and leaves it paused: the
//! caller then resumes it or stops the VMM. Requests are served on the VMM
//! thread's event loop; the socket is created mode 0600 (whoever can write
//! it controls the VM), and a client gets 5 s to send its request.
//!
//! The request and answer types and the client side live in the contract
//! crate shared with the runtime ([`kata_like_vmm_contract::api`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

pub use kata_like_vmm_contract::api::{call, Request, Response};

use crate::config::VmConfig;
use crate::devices::bus::lock;
use crate::devices::serial::SerialDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::pause::PauseGate;
use crate::snapshot::{self, format, SnapshotError, VcpuState, VmState};

/// How long the vCPUs get to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request line accepted.
const MAX_REQUEST: u64 = 4096;

/// What a snapshot needs from the built VM.
pub struct Controller {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// Where the vCPUs park.
    pub gate: Arc<PauseGate>,
    /// Number of vCPUs.
    pub vcpus: usize,
    /// virtio-mmio transports, in [`VmState::transports`] order.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The configuration the VM runs with.
    pub config: VmConfig,
    /// vCPU states while paused.
    paused: Option<Vec<VcpuState>>,
    /// Devices stopped by a snapshot, to restart on resume.
    quiesced: bool,
    /// Each vCPU's KVM statistics.
    kvm_stats: Vec<crate::kvm_stats::VcpuStats>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").field("paused", &self.paused.is_some()).finish()
    }
}

impl Controller {
    /// A controller for a running VM.
    pub fn new(
        vm: Arc<VmFd>,
        mem: GuestMemoryMmap,
        gate: Arc<PauseGate>,
        vcpus: usize,
        transports: Vec<Arc<Mutex<MmioTransport>>>,
        serial: Arc<Mutex<SerialDevice>>,
        config: VmConfig,
    ) -> Self {
        Controller {
            vm,
            mem,
            gate,
            vcpus,
            transports,
            serial,
            config,
            paused: None,
            quiesced: false,
            kvm_stats: Vec::new(),
        }
    }

    /// The vCPUs' KVM statistics, for `{"action":"stats"}`.
    pub fn with_kvm_stats(mut self, kvm_stats: Vec<crate::kvm_stats::VcpuStats>) -> Self {
        self.kvm_stats = kvm_stats;
        self
    }

    fn state_name(&self) -> String {
        if self.paused.is_some() { "paused" } else { "running" }.to_string()
    }

    /// Stops the vCPUs (no-op when paused).
    pub fn pause(&mut self) -> Result<(), SnapshotError> {
        if self.paused.is_none() {
            let states = self.gate.pause(self.vcpus, PAUSE_TIMEOUT).map_err(SnapshotError::State)?;
            self.paused = Some(states);
            tracing::info!("VM paused");
        }
        Ok(())
    }

    /// Restarts devices a snapshot stopped, then the vCPUs.
    pub fn resume(&mut self) -> Result<(), SnapshotError> {
        if self.quiesced {
            for transport in &self.transports {
                lock(transport).resume().map_err(SnapshotError::State)?;
            }
            self.quiesced = false;
        }
        if self.paused.take().is_some() {
            self.gate.resume();
            tracing::info!("VM resumed");
        }
        Ok(())
    }

    /// Pauses and writes a snapshot into `dir`.
    pub fn snapshot(&mut self, dir: &Path) -> Result<snapshot::memory::DumpStats, SnapshotError> {
        crate::jail::may_write(dir).map_err(SnapshotError::State)?;
        self.pause()?;
        std::fs::create_dir_all(dir).map_err(SnapshotError::io(dir))?;
        let kvm = snapshot::kvm::save_vm(&self.vm)?;
        let mut transports = Vec::with_capacity(self.transports.len());
        for transport in &self.transports {
            self.quiesced = true;
            transports.push(lock(transport).snapshot().map_err(SnapshotError::State)?);
        }
        let stats = snapshot::memory::dump(&self.mem, &dir.join(snapshot::MEMORY_FILE))?;
        let state = VmState {
            config: self.config.clone(),
            memory_size: stats.ram_bytes,
            memory_crc32: stats.crc32,
            kvm,
            vcpus: self.paused.clone().unwrap_or_default(),
            serial: lock(&self.serial).snapshot(),
            transports,
        };
        // The state goes last: a directory with a state file is complete.
        format::write(&dir.join(snapshot::STATE_FILE), &state)?;
        Ok(stats)
    }

    /// KVM's statistics summed over the vCPUs.
    fn stats(&self) -> Result<BTreeMap<String, u64>, String> {
        if self.kvm_stats.is_empty() {
            return Err("this host's KVM has no statistics descriptors (KVM_GET_STATS_FD, Linux 5.14)".into());
        }
        crate::kvm_stats::sum(&self.kvm_stats).map_err(|e| format!("reading KVM statistics: {e}"))
    }

    /// Serves one request.
    pub fn handle(&mut self, request: Request) -> Response {
        let started = Instant::now();
        // What the request answers beyond `ok` and `state`.
        let result = match &request {
            Request::Pause => self.pause().map(|()| Response::default()).map_err(|e| e.to_string()),
            Request::Resume => self.resume().map(|()| Response::default()).map_err(|e| e.to_string()),
            Request::Status => Ok(Response::default()),
            Request::Stats => self.stats().map(|stats| Response { stats: Some(stats), ..Response::default() }),
            Request::Snapshot { path } => self.snapshot(path).map_err(|e| e.to_string()).map(|stats| {
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(path = %path.display(), ram = stats.ram_bytes, data = stats.data_bytes, ms, "snapshot written");
                Response {
                    ram_bytes: Some(stats.ram_bytes),
                    data_bytes: Some(stats.data_bytes),
                    ms: Some(ms),
                    ..Response::default()
                }
            }),
        };
        match result {
            Ok(response) => Response { ok: true, state: Some(self.state_name()), ..response },
            Err(e) => {
                tracing::warn!(error = %e, ?request, "control request failed");
                Response { ok: false, error: Some(e), state: Some(self.state_name()), ..Response::default() }
            }
        }
    }
}

/// Parses one request line; the error quotes it and says what is expected.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str::<Request>(line.trim()).map_err(|e| {
        format!("bad request {:?}: {e} (expected {{\"action\":\"pause|resume|snapshot|status|stats\"}})", line.trim())
    })
}

/// The listening control socket on the event loop.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    controller: Controller,
}

impl ApiServer {
    /// Listens on `path` (replacing a stale socket file), mode 0600.
    pub fn bind(path: &Path, controller: Controller) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ApiServer { listener, path: path.to_path_buf(), controller })
    }

    fn serve(&mut self, stream: UnixStream) {
        let reply = |mut stream: &UnixStream, response: &Response| {
            let mut line = serde_json::to_vec(response).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
            line.push(b'\n');
            let _ = stream.write_all(&line);
        };
        if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(REQUEST_TIMEOUT)).is_err() {
            return;
        }
        let mut line = String::new();
        let read = BufReader::new(std::io::Read::take(&stream, MAX_REQUEST)).read_line(&mut line);
        let response = match read {
            Err(e) => Response { ok: false, error: Some(format!("reading the request: {e}")), ..Response::default() },
            Ok(_) => match parse_request(&line) {
                Ok(request) => self.controller.handle(request),
                Err(error) => Response { ok: false, error: Some(error), ..Response::default() },
            },
        };
        reply(&stream, &response);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl MutEventSubscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.listener.as_raw_fd(), EventSet::IN)) {
            tracing::error!(error = ?e, "cannot watch the control socket");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.serve(stream),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    break;
                }
            }
        }
    }
}
