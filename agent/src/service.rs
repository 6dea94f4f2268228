//! The ttrpc AgentService. Every request is validated; failures become ttrpc
//! status codes, and a panic inside a handler is caught and reported as
//! INTERNAL instead of taking down PID 1 (which would panic the guest).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kata_like_protocol::agent::{
    HealthRequest, HealthResponse, RunProcessRequest, RunProcessResponse, ShutdownRequest, ShutdownResponse,
};
use kata_like_protocol::agent_ttrpc::AgentService;
use ttrpc::{Code, TtrpcContext};

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
