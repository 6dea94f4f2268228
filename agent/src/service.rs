//! The ttrpc AgentService. Every request is validated; failures become ttrpc
//! status codes, and a panic inside a handler is caught and reported as
//! INTERNAL instead of taking down the agent (which would end the VM).
//!
//! ttrpc's generated handlers give up on a payload that does not decode by
//! closing the whole connection without an answer; [`methods`] wraps each
//! of them so that such a request gets INVALID_ARGUMENT like any other bad
//! request.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kata_like_protocol::agent::{
    ConfigureNetworkRequest, ContainerRequest, CreateContainerRequest, EchoRequest, EchoResponse, Empty,
    ExecProcessRequest, HealthRequest, HealthResponse, ListPidsResponse, OomEvent, ProcessRequest, ProcessResponse,
    ResizeTtyRequest, RestoredRequest, RunProcessRequest, RunProcessResponse, SetupSandboxRequest, ShutdownRequest,
    ShutdownResponse, SignalProcessRequest, StatsResponse, UpdateContainerRequest, WaitProcessResponse,
};
use kata_like_protocol::agent_ttrpc::{create_agent_service, AgentService};
use ttrpc::{Code, MethodHandler, TtrpcContext};

use crate::container::{ContainerError, Containers};
use crate::process::{self, RunError};
use crate::reaper::Reaper;

/// The service state.
#[derive(Debug)]
pub struct Agent {
    reaper: Arc<Reaper>,
    containers: Arc<Containers>,
    started: Instant,
    is_init: bool,
}

impl Agent {
    /// A service whose children are reaped by `reaper`.
    pub fn new(reaper: Arc<Reaper>, containers: Arc<Containers>, is_init: bool) -> Self {
        Agent { reaper, containers, started: Instant::now(), is_init }
    }
}

fn container_status(e: ContainerError) -> ttrpc::Error {
    let code = match e {
        ContainerError::Invalid(_) => Code::INVALID_ARGUMENT,
        ContainerError::NotFound(_) => Code::NOT_FOUND,
        ContainerError::Exists(_) => Code::ALREADY_EXISTS,
        ContainerError::State(_) => Code::FAILED_PRECONDITION,
        ContainerError::Failed(_) => Code::INTERNAL,
    };
    status(code, e.to_string())
}

fn pid_response(pid: u32) -> ProcessResponse {
    let mut resp = ProcessResponse::new();
    resp.pid = pid;
    resp
}

type Handler = Box<dyn MethodHandler + Send + Sync>;

/// The RPC name at the end of a ttrpc method path (`/service/Name`).
fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

/// Answers INVALID_ARGUMENT to payloads that do not decode as the method's
/// request type, and hands the rest to the generated handler. The payload
/// is decoded twice (here and by the handler): a copy of at most a few MiB,
/// the price of not patching ttrpc's server loop.
struct DecodeChecked {
    inner: Handler,
    decode: fn(&[u8]) -> Result<(), protobuf::Error>,
}

impl MethodHandler for DecodeChecked {
    fn handler(&self, ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<()> {
        if let Err(e) = (self.decode)(&req.payload) {
            let mut res = ttrpc::Response::new();
            res.status = protobuf::MessageField::some(ttrpc::get_status(
                Code::INVALID_ARGUMENT,
                format!("malformed {} request: {e}", req.method),
            ));
            return ctx.respond(ctx.mh.stream_id, res);
        }
        self.inner.handler(ctx, req)
    }
}

/// Wraps the generated handler of RPC `name` in its decode check, or gives
/// it back when `name` is a method the table does not know yet.
fn decode_checked(name: &str, handler: Handler) -> Result<Handler, Handler> {
    match kata_like_protocol::checks::request_decoder(name) {
        Some(decode) => Ok(Box::new(DecodeChecked { inner: handler, decode })),
        None => Err(handler),
    }
}

/// The service's methods for `ttrpc::Server::register_service`.
pub fn methods(agent: Arc<Agent>) -> HashMap<String, Handler> {
    create_agent_service(agent)
        .into_iter()
        .map(|(path, handler)| {
            let handler = decode_checked(method_name(&path), handler).unwrap_or_else(|unchecked| {
                tracing::warn!(path, "RPC served without a decode check");
                unchecked
            });
            (path, handler)
        })
        .collect()
}

fn status(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn guarded<T>(method: &str, f: impl FnOnce() -> ttrpc::Result<T>) -> ttrpc::Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(method, panic = %what, "handler panicked");
            Err(status(Code::INTERNAL, format!("{method}: agent error: {what}")))
        }
    }
}

fn boottime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

impl AgentService for Agent {
    fn health(&self, _ctx: &TtrpcContext, _req: HealthRequest) -> ttrpc::Result<HealthResponse> {
        guarded("Health", || {
            let mut resp = HealthResponse::new();
            resp.version = env!("CARGO_PKG_VERSION").to_string();
            resp.uptime_ms = boottime_ms();
            resp.agent_uptime_ms = self.started.elapsed().as_millis() as u64;
            resp.kernel_release =
                nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
            Ok(resp)
        })
    }

    fn echo(&self, _ctx: &TtrpcContext, req: EchoRequest) -> ttrpc::Result<EchoResponse> {
        guarded("Echo", || {
            let limit = kata_like_protocol::MAX_MESSAGE_BYTES;
            // The reply's own fields and ttrpc's response envelope take at
            // most 32 bytes besides the data.
            if req.reply_size as usize + 32 > limit {
                let message =
                    format!("Echo reply of {} bytes would exceed the message limit of {limit} bytes", req.reply_size);
                return Err(status(Code::INVALID_ARGUMENT, message));
            }
            let mut resp = EchoResponse::new();
            resp.received_len = req.data.len() as u32;
            resp.received_crc32 = kata_like_protocol::echo::checksum(&req.data);
            resp.data = match req.reply_size {
                0 => req.data,
                n => kata_like_protocol::echo::echo_pattern(req.seed, n as usize),
            };
            Ok(resp)
        })
    }

    fn run_process(&self, _ctx: &TtrpcContext, req: RunProcessRequest) -> ttrpc::Result<RunProcessResponse> {
        guarded("RunProcess", || {
            process::run(&self.reaper, &req).map_err(|e| {
                let code = match e {
                    RunError::Invalid(_) => Code::INVALID_ARGUMENT,
                    RunError::NotFound(_) => Code::NOT_FOUND,
                    RunError::Spawn { .. } => Code::FAILED_PRECONDITION,
                };
                status(code, e.to_string())
            })
        })
    }

    fn setup_sandbox(&self, _ctx: &TtrpcContext, req: SetupSandboxRequest) -> ttrpc::Result<Empty> {
        guarded("SetupSandbox", || {
            crate::sandbox::setup(&req, self.containers.shared_root())
                .map(|()| Empty::new())
                .map_err(|e| status(Code::FAILED_PRECONDITION, e))
        })
    }

    fn restored(&self, _ctx: &TtrpcContext, req: RestoredRequest) -> ttrpc::Result<Empty> {
        guarded("Restored", || {
            crate::sandbox::restored(&req).map(|()| Empty::new()).map_err(|e| status(Code::FAILED_PRECONDITION, e))
        })
    }

    fn configure_network(&self, _ctx: &TtrpcContext, req: ConfigureNetworkRequest) -> ttrpc::Result<Empty> {
        guarded("ConfigureNetwork", || {
            crate::network::configure(&req).map(|()| Empty::new()).map_err(|e| match e {
                crate::network::NetworkError::Invalid(msg) => status(Code::INVALID_ARGUMENT, msg),
                crate::network::NetworkError::Failed(msg) => status(Code::FAILED_PRECONDITION, msg),
            })
        })
    }

    fn create_container(&self, _ctx: &TtrpcContext, req: CreateContainerRequest) -> ttrpc::Result<ProcessResponse> {
        guarded("CreateContainer", || {
            let stdio = req.stdio.clone().unwrap_or_default();
            crate::storage::ensure(&req.storages).map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
            self.containers
                .create(&req.container_id, &req.spec_json, &req.rootfs, &stdio)
                .map(pid_response)
                .map_err(container_status)
        })
    }

    fn start_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<ProcessResponse> {
        guarded("StartContainer", || {
            self.containers.start(&req.container_id).map(pid_response).map_err(container_status)
        })
    }

    fn exec_process(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<ProcessResponse> {
        guarded("ExecProcess", || {
            let stdio = req.stdio.clone().unwrap_or_default();
            self.containers
                .exec(&req.container_id, &req.exec_id, &req.process_json, &stdio)
                .map(pid_response)
                .map_err(container_status)
        })
    }

    fn signal_process(&self, _ctx: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        guarded("SignalProcess", || {
            self.containers
                .signal(&req.container_id, &req.exec_id, req.signal, req.all)
                .map(|()| Empty::new())
                .map_err(container_status)
        })
    }

    fn wait_process(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<WaitProcessResponse> {
        guarded("WaitProcess", || {
            let exit = self.containers.wait(&req.container_id, &req.exec_id).map_err(container_status)?;
            let mut resp = WaitProcessResponse::new();
            resp.exit_status = exit.status;
            resp.exited_at_ns = exit.at_ns;
            resp.oom_killed = exit.oom_killed;
            Ok(resp)
        })
    }

    fn resize_tty(&self, _ctx: &TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        guarded("ResizeTty", || {
            self.containers
                .resize(&req.container_id, &req.exec_id, req.width, req.height)
                .map(|()| Empty::new())
                .map_err(container_status)
        })
    }

    fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        // Stdin EOF travels on the stdin stream itself (the host half-closes
        // it); this only checks that the process exists.
        guarded("CloseStdin", || {
            self.containers
                .wait_target_exists(&req.container_id, &req.exec_id)
                .map(|()| Empty::new())
                .map_err(container_status)
        })
    }

    fn pause_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        guarded("PauseContainer", || {
            self.containers.set_paused(&req.container_id, true).map(|()| Empty::new()).map_err(container_status)
        })
    }

    fn resume_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        guarded("ResumeContainer", || {
            self.containers.set_paused(&req.container_id, false).map(|()| Empty::new()).map_err(container_status)
        })
    }

    fn list_pids(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<ListPidsResponse> {
        guarded("ListPids", || {
            let mut resp = ListPidsResponse::new();
            resp.pids = self.containers.pids(&req.container_id).map_err(container_status)?;
            Ok(resp)
        })
    }

    fn stats_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<StatsResponse> {
        guarded("StatsContainer", || self.containers.stats(&req.container_id).map_err(container_status))
    }

    fn update_container(&self, _ctx: &TtrpcContext, req: UpdateContainerRequest) -> ttrpc::Result<Empty> {
        guarded("UpdateContainer", || {
            self.containers
                .update(&req.container_id, &req.resources_json)
                .map(|()| Empty::new())
                .map_err(container_status)
        })
    }

    fn remove_container(&self, _ctx: &TtrpcContext, req: ContainerRequest) -> ttrpc::Result<Empty> {
        guarded("RemoveContainer", || {
            self.containers.remove(&req.container_id).map(|()| Empty::new()).map_err(container_status)
        })
    }

    fn get_oom_event(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<OomEvent> {
        guarded("GetOomEvent", || {
            let mut event = OomEvent::new();
            event.container_id = self.containers.next_oom();
            Ok(event)
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<ShutdownResponse> {
        guarded("Shutdown", || {
            let is_init = self.is_init;
            std::thread::Builder::new()
                .name("shutdown".into())
                .spawn(move || crate::shutdown::power_off(is_init, Duration::from_millis(100)))
                .map_err(|e| status(Code::INTERNAL, format!("cannot start shutdown: {e}")))?;
            Ok(ShutdownResponse::new())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_method_is_decode_checked() {
        let reaper = Arc::new(Reaper::new());
        let io = Arc::new(crate::container::stdio::IoHub::default());
        let containers = Arc::new(Containers::new(reaper.clone(), io, "/nonexistent".into(), "/nonexistent".into()));
        let agent = Arc::new(Agent::new(reaper, containers, false));
        for (path, handler) in create_agent_service(agent) {
            assert!(decode_checked(method_name(&path), handler).is_ok(), "{path} has no decode check");
        }
    }
}
