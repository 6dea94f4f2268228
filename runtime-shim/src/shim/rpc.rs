//! Small helpers of the Task service: the core's errors and agent failures
//! as ttrpc errors (mapped here, once), timestamps, and running blocking
//! core calls.

use containerd_shim::protos::protobuf;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::TtrpcResult;
use kata_like_protocol::AgentClientError;

use crate::sandbox::{CoreError, Exit};

/// A ttrpc status error.
pub(super) fn err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

/// A failed agent RPC as a ttrpc error with the agent's code and message.
pub(super) fn agent_err(e: AgentClientError) -> ttrpc::Error {
    let code = match e.agent_status() {
        // The same google.rpc codes on both ttrpc versions.
        Some(s) => {
            protobuf::Enum::from_i32(protobuf::Enum::value(&s.code.enum_value_or_default())).unwrap_or(Code::UNKNOWN)
        }
        None => Code::UNAVAILABLE,
    };
    err(code, e.message())
}

/// The core's error as containerd hears it.
pub(super) fn core_err(e: CoreError) -> ttrpc::Error {
    let code = match &e {
        CoreError::Invalid(_) => Code::INVALID_ARGUMENT,
        CoreError::NotFound(_) => Code::NOT_FOUND,
        CoreError::Exists(_) => Code::ALREADY_EXISTS,
        CoreError::WrongState(_) => Code::FAILED_PRECONDITION,
        CoreError::Unavailable(_) => Code::UNAVAILABLE,
        CoreError::Failed(_) => Code::INTERNAL,
        CoreError::Agent(_) => {
            let CoreError::Agent(e) = e else { unreachable!() };
            return agent_err(e);
        }
    };
    err(code, e.to_string())
}

/// Nanoseconds since the epoch as a protobuf timestamp.
fn ts_from_ns(ns: u64) -> Timestamp {
    let mut t = Timestamp::new();
    t.seconds = (ns / 1_000_000_000) as i64;
    t.nanos = (ns % 1_000_000_000) as i32;
    t
}

/// An exit's time as a protobuf timestamp.
pub(super) fn exit_ts(exit: &Exit) -> Timestamp {
    ts_from_ns(exit.at_ns)
}

/// Runs `f` on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> TtrpcResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| err(Code::INTERNAL, format!("worker failed: {e}")))
}
