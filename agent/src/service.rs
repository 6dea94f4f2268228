//! The ttrpc AgentService. Every request is validated; failures become ttrpc
//! status codes, and a panic inside a handler is caught and reported as
//! INTERNAL instead of taking down PID 1 (which would panic the guest).
//!
//! ttrpc's generated handlers give up on a payload that does not decode by
//! closing the whole connection without an answer; [`methods`] wraps each
//! of them so that such a request gets INVALID_ARGUMENT like any other bad
//! request.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kata_like_protocol::agent::{
    HealthRequest, HealthResponse, RunProcessRequest, RunProcessResponse, ShutdownRequest, ShutdownResponse,
};
use kata_like_protocol::agent_ttrpc::{create_agent_service, AgentService};
use ttrpc::{Code, MethodHandler, TtrpcContext};

use crate::process::{self, RunError};
use crate::reaper::Reaper;

/// The service state.
#[derive(Debug)]
pub struct Agent {
    reaper: Arc<Reaper>,
    started: Instant,
    is_init: bool,
}

impl Agent {
    /// A service whose children are reaped by `reaper`.
    pub fn new(reaper: Arc<Reaper>, is_init: bool) -> Self {
        Agent { reaper, started: Instant::now(), is_init }
    }
}

type Handler = Box<dyn MethodHandler + Send + Sync>;

/// The RPC name at the end of a ttrpc method path (`/service/Name`).
fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

/// Answers INVALID_ARGUMENT to payloads that are not a `T`, and hands the
/// rest to the generated handler. The payload is decoded twice (here and by
/// the handler): a copy of at most a few MiB, the price of not patching
/// ttrpc's server loop.
struct DecodeChecked<T> {
    inner: Handler,
    request_type: PhantomData<fn() -> T>,
}

impl<T: protobuf::Message> MethodHandler for DecodeChecked<T> {
    fn handler(&self, ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<()> {
        if let Err(e) = T::parse_from_bytes(&req.payload) {
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

fn checked<T: protobuf::Message>(inner: Handler) -> Handler {
    Box::new(DecodeChecked::<T> { inner, request_type: PhantomData })
}

/// Wraps the generated handler of RPC `name` in its decode check, or gives
/// it back when `name` is a method this list does not know yet.
fn decode_checked(name: &str, handler: Handler) -> Result<Handler, Handler> {
    match name {
        "Health" => Ok(checked::<HealthRequest>(handler)),
        "RunProcess" => Ok(checked::<RunProcessRequest>(handler)),
        "Shutdown" => Ok(checked::<ShutdownRequest>(handler)),
        _ => Err(handler),
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
        let agent = Arc::new(Agent::new(Arc::new(Reaper::new()), false));
        for (path, handler) in create_agent_service(agent) {
            assert!(decode_checked(method_name(&path), handler).is_ok(), "{path} has no decode check");
        }
    }
}
