//! A link to a sandbox's guest agent: the agent client and the VM's vsock
//! socket. The process that owns the VM holds one inside its [`Sandbox`];
//! other processes of a front end (the runc-compatible CLI's `exec`,
//! `kill`, `pause`) open their own with [`GuestLink::connect`] to run and
//! wait for processes in a sandbox they do not own.
//!
//! [`Sandbox`]: super::Sandbox

use std::path::{Path, PathBuf};
use std::time::Duration;

use kata_like_protocol::agent::{ExecProcessRequest, WaitProcessResponse};
use kata_like_protocol::AgentClient;

use super::error::CoreError;
use super::io::{ProcessIo, StdioPaths};

/// The agent client and the socket its streams are opened on.
#[derive(Debug)]
pub struct GuestLink {
    client: AgentClient,
    uds: PathBuf,
    rpc_timeout: Duration,
}

impl GuestLink {
    /// A link over an agent connection already made.
    pub fn new(client: AgentClient, uds: PathBuf, rpc_timeout: Duration) -> GuestLink {
        GuestLink { client, uds, rpc_timeout }
    }

    /// Connects to the agent of the VM whose state directory is `vm_dir`.
    pub fn connect(vm_dir: &Path, rpc_timeout: Duration) -> Result<GuestLink, CoreError> {
        let uds = crate::vm::vsock_path(vm_dir);
        let client = AgentClient::connect(&uds, rpc_timeout)
            .map_err(|e| CoreError::Unavailable(format!("cannot reach the guest agent at {}: {e}", uds.display())))?;
        Ok(GuestLink { client, uds, rpc_timeout })
    }

    /// The agent client (bounded RPCs).
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// The VMM's vsock socket.
    pub fn uds(&self) -> &Path {
        &self.uds
    }

    /// A fresh connection for a long poll (one per waiter, so waits never
    /// queue behind each other in the agent's per-connection thread pool).
    pub fn long_poll_client(&self) -> Result<AgentClient, CoreError> {
        AgentClient::connect(&self.uds, self.rpc_timeout).map_err(|e| CoreError::Unavailable(e.to_string()))
    }

    /// Starts process `exec_id` in container `id` from the OCI process JSON
    /// `process`, its stdio connected as `stdio` says; returns its guest
    /// PID and its I/O.
    pub fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process: Vec<u8>,
        stdio: &StdioPaths,
    ) -> Result<(u32, ProcessIo), CoreError> {
        let io = ProcessIo::connect(&self.uds, id, exec_id, stdio).map_err(CoreError::Failed)?;
        let mut req = ExecProcessRequest::new();
        req.container_id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.process_json = process;
        req.stdio = protobuf::MessageField::some(stdio.agent_stdio());
        let pid = self.client.exec_process(&req).map_err(CoreError::Agent)?;
        Ok((pid, io))
    }

    /// Waits (on its own connection) until process `exec_id` ("" = init)
    /// of container `id` exits.
    pub fn wait_process(&self, id: &str, exec_id: &str) -> Result<WaitProcessResponse, CoreError> {
        let client = self.long_poll_client()?;
        client.wait_process(id, exec_id).map_err(CoreError::Agent)
    }
}
