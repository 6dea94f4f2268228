//! A blocking agent client over the VMM's hybrid vsock socket.

use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent::{
    ConfigureNetworkRequest, ContainerRequest, CreateContainerRequest, EchoRequest, EchoResponse, ExecProcessRequest,
    HealthRequest, HealthResponse, ListPidsResponse, ProcessRequest, ResizeTtyRequest, RestoredRequest,
    RunProcessRequest, RunProcessResponse, SetupSandboxRequest, ShutdownRequest, SignalProcessRequest, StatsResponse,
    UpdateContainerRequest, WaitProcessResponse,
};
use crate::agent_ttrpc::AgentServiceClient;
use crate::hybrid_vsock::{self, HandshakeError};
use crate::AGENT_VSOCK_PORT;

/// How long one handshake step may take before the attempt is retried:
/// long, because a guest whose kernel is emulated may take many seconds
/// to accept under load (the VMM waits up to 60 s for its answer).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between connection attempts while the guest boots.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// Errors of [`AgentClient`].
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// The hybrid vsock connection could not be made.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The agent answered with an error, or the transport failed.
    #[error("agent {method} failed: {source}")]
    Rpc {
        /// The RPC that failed.
        method: &'static str,
        /// The ttrpc error.
        source: ttrpc::Error,
    },
    /// The agent did not answer a health check before the deadline.
    #[error("agent on {uds} did not answer within {timeout:?}; last error: {last}")]
    NotReady {
        /// The VMM's vsock socket.
        uds: PathBuf,
        /// The deadline that passed.
        timeout: Duration,
        /// The last error seen while retrying.
        last: String,
    },
}

impl AgentClientError {
    /// The agent's own answer when it refused the request (a ttrpc status),
    /// or None when the transport failed (timeout, lost connection).
    pub fn agent_status(&self) -> Option<&ttrpc::Status> {
        match self {
            AgentClientError::Rpc { source: ttrpc::Error::RpcStatus(status), .. } => Some(status),
            _ => None,
        }
    }

    /// What to tell a user: the agent's own message when it refused the
    /// request (without ttrpc's wrapping), else the transport failure.
    pub fn message(&self) -> String {
        self.agent_status().map_or_else(|| self.to_string(), |status| status.message.clone())
    }
}

/// A connected agent client.
#[derive(Clone)]
pub struct AgentClient {
    inner: AgentServiceClient,
    rpc_timeout: Duration,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient").field("rpc_timeout", &self.rpc_timeout).finish()
    }
}

impl AgentClient {
    /// Connects once to the agent through the VMM's vsock socket `uds`.
    /// `rpc_timeout` bounds every RPC made with the returned client.
    pub fn connect(uds: &Path, rpc_timeout: Duration) -> Result<Self, AgentClientError> {
        let stream = hybrid_vsock::connect(uds, AGENT_VSOCK_PORT, HANDSHAKE_TIMEOUT)?;
        let client = ttrpc::Client::new(stream.into_raw_fd())
            .map_err(|source| AgentClientError::Rpc { method: "connect", source })?;
        Ok(AgentClient { inner: AgentServiceClient::new(client), rpc_timeout })
    }

    /// Connects and health-checks the agent, retrying while the guest boots,
    /// until it answers or `timeout` passes. `alive` is asked between attempts
    /// and can end the wait early (e.g. when the VMM process has exited): it
    /// returns an error text to give up with.
    pub fn wait_ready(
        uds: &Path,
        timeout: Duration,
        rpc_timeout: Duration,
        mut alive: impl FnMut() -> Result<(), String>,
    ) -> Result<(Self, HealthResponse), AgentClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Err(reason) = alive() {
                return Err(AgentClientError::NotReady { uds: uds.to_path_buf(), timeout, last: reason });
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = AgentClient::connect(uds, rpc_timeout.min(remaining.max(RETRY_INTERVAL)))
                .and_then(|client| client.health().map(|health| (client, health)));
            let last = match attempt {
                Ok(ready) => return Ok(ready),
                Err(e) => e.to_string(),
            };
            if Instant::now() + RETRY_INTERVAL >= deadline {
                return Err(AgentClientError::NotReady { uds: uds.to_path_buf(), timeout, last });
            }
            std::thread::sleep(RETRY_INTERVAL);
        }
    }

    /// The same connection with another bound on each RPC.
    pub fn with_rpc_timeout(&self, rpc_timeout: Duration) -> AgentClient {
        AgentClient { inner: self.inner.clone(), rpc_timeout }
    }

    fn context(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.rpc_timeout.as_nanos().try_into().unwrap_or(i64::MAX))
    }

    /// Agent version, guest uptime and kernel release.
    pub fn health(&self) -> Result<HealthResponse, AgentClientError> {
        self.inner
            .health(self.context(), &HealthRequest::new())
            .map_err(|source| AgentClientError::Rpc { method: "Health", source })
    }

    /// The `Echo` diagnostic RPC: `data` to the agent, and back either
    /// `data` (`reply_size` 0) or `reply_size` bytes of
    /// [`echo_pattern`](crate::echo::echo_pattern)`(seed)`.
    pub fn echo(&self, data: Vec<u8>, reply_size: u32, seed: u64) -> Result<EchoResponse, AgentClientError> {
        let mut req = EchoRequest::new();
        req.data = data;
        req.reply_size = reply_size;
        req.seed = seed;
        self.call("Echo", false, |c, ctx| c.echo(ctx, &req))
    }

    /// Tells a guest restored from a snapshot to reseed its RNG with
    /// `entropy` and set its clock.
    pub fn restored(&self, request: &RestoredRequest) -> Result<(), AgentClientError> {
        self.inner
            .restored(self.context(), request)
            .map(|_| ())
            .map_err(|source| AgentClientError::Rpc { method: "Restored", source })
    }

    /// Runs a process in the guest and waits for it. The RPC deadline is
    /// extended by the request's own `timeout_ms`.
    pub fn run_process(&self, request: &RunProcessRequest) -> Result<RunProcessResponse, AgentClientError> {
        let mut ctx = self.context();
        if request.timeout_ms > 0 {
            ctx.timeout_nano = ctx.timeout_nano.saturating_add(i64::from(request.timeout_ms) * 1_000_000);
        } else {
            ctx.timeout_nano = 0;
        }
        self.inner.run_process(ctx, request).map_err(|source| AgentClientError::Rpc { method: "RunProcess", source })
    }

    /// Calls RPC `method` through `f` with this client's deadline, or with
    /// none for long polls (`long_poll`), naming the method in errors.
    fn call<R>(
        &self,
        method: &'static str,
        long_poll: bool,
        f: impl FnOnce(&AgentServiceClient, ttrpc::context::Context) -> ttrpc::Result<R>,
    ) -> Result<R, AgentClientError> {
        let mut ctx = self.context();
        if long_poll {
            ctx.timeout_nano = 0;
        }
        f(&self.inner, ctx).map_err(|source| AgentClientError::Rpc { method, source })
    }

    /// Sets the guest up for containers (entropy, clock, shared fs tag).
    pub fn setup_sandbox(&self, req: &SetupSandboxRequest) -> Result<(), AgentClientError> {
        self.call("SetupSandbox", false, |c, ctx| c.setup_sandbox(ctx, req)).map(drop)
    }

    /// Configures the guest's interfaces, addresses and routes.
    pub fn configure_network(&self, req: &ConfigureNetworkRequest) -> Result<(), AgentClientError> {
        self.call("ConfigureNetwork", false, |c, ctx| c.configure_network(ctx, req)).map(drop)
    }

    /// Creates a container; its init's guest PID.
    pub fn create_container(&self, req: &CreateContainerRequest) -> Result<u32, AgentClientError> {
        self.call("CreateContainer", false, |c, ctx| c.create_container(ctx, req)).map(|r| r.pid)
    }

    /// Starts a created container; its init's guest PID.
    pub fn start_container(&self, container_id: &str) -> Result<u32, AgentClientError> {
        let req = container_request(container_id);
        self.call("StartContainer", false, |c, ctx| c.start_container(ctx, &req)).map(|r| r.pid)
    }

    /// Starts an exec'd process; its guest PID.
    pub fn exec_process(&self, req: &ExecProcessRequest) -> Result<u32, AgentClientError> {
        self.call("ExecProcess", false, |c, ctx| c.exec_process(ctx, req)).map(|r| r.pid)
    }

    /// Long poll (no deadline): waits until process `exec_id` ("" = init)
    /// of container `container_id` exits. Use a connection of its own.
    pub fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<WaitProcessResponse, AgentClientError> {
        let mut req = ProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        self.call("WaitProcess", true, |c, ctx| c.wait_process(ctx, &req))
    }

    /// Removes a stopped container.
    pub fn remove_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        let req = container_request(container_id);
        self.call("RemoveContainer", false, |c, ctx| c.remove_container(ctx, &req)).map(drop)
    }

    /// The guest PIDs of a container's processes.
    pub fn list_pids(&self, container_id: &str) -> Result<ListPidsResponse, AgentClientError> {
        let req = container_request(container_id);
        self.call("ListPids", false, |c, ctx| c.list_pids(ctx, &req))
    }

    /// Freezes a container's processes.
    pub fn pause_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        let req = container_request(container_id);
        self.call("PauseContainer", false, |c, ctx| c.pause_container(ctx, &req)).map(drop)
    }

    /// Thaws a paused container.
    pub fn resume_container(&self, container_id: &str) -> Result<(), AgentClientError> {
        let req = container_request(container_id);
        self.call("ResumeContainer", false, |c, ctx| c.resume_container(ctx, &req)).map(drop)
    }

    /// Changes a container's resources.
    pub fn update_container(&self, req: &UpdateContainerRequest) -> Result<(), AgentClientError> {
        self.call("UpdateContainer", false, |c, ctx| c.update_container(ctx, req)).map(drop)
    }

    /// A container's cgroup statistics.
    pub fn stats_container(&self, container_id: &str) -> Result<StatsResponse, AgentClientError> {
        let req = container_request(container_id);
        self.call("StatsContainer", false, |c, ctx| c.stats_container(ctx, &req))
    }

    /// Sends `signal` to process `exec_id` ("" = init) of container
    /// `container_id`, or with `all` to every process of the container.
    pub fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentClientError> {
        let mut req = SignalProcessRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.signal = signal;
        req.all = all;
        self.call("SignalProcess", false, |c, ctx| c.signal_process(ctx, &req)).map(|_| ())
    }

    /// Sets the window size of process `exec_id`'s terminal.
    pub fn resize_tty(
        &self,
        container_id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), AgentClientError> {
        let mut req = ResizeTtyRequest::new();
        req.container_id = container_id.to_string();
        req.exec_id = exec_id.to_string();
        req.width = width;
        req.height = height;
        self.call("ResizeTty", false, |c, ctx| c.resize_tty(ctx, &req)).map(|_| ())
    }

    /// Asks the agent to end the VM. The guest may reset before the answer
    /// crosses the vsock device; a closed connection counts as success, the
    /// caller waits for the VMM process to exit.
    pub fn shutdown(&self) -> Result<(), AgentClientError> {
        match self.inner.shutdown(self.context(), &ShutdownRequest::new()) {
            Ok(_) => Ok(()),
            Err(ttrpc::Error::LocalClosed | ttrpc::Error::RemoteClosed | ttrpc::Error::Eof) => Ok(()),
            Err(ttrpc::Error::Socket(_)) => Ok(()),
            Err(source) => Err(AgentClientError::Rpc { method: "Shutdown", source }),
        }
    }
}

/// A request naming container `id`.
fn container_request(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.to_string();
    r
}
