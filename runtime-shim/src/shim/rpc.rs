//! Small helpers of the Task service: ttrpc errors from codes and agent
//! failures, timestamps, and running blocking agent calls.

use containerd_shim::protos::protobuf;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::TtrpcResult;
use kata_like_protocol::AgentClientError;

/// The agent's own message of a failed RPC (not ttrpc's wrapping).
pub fn agent_message(e: &AgentClientError) -> String {
    e.agent_status().map_or_else(|| e.to_string(), |status| status.message.clone())
}

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
    err(code, agent_message(&e))
}

/// Now, as a protobuf timestamp.
pub(super) fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// Nanoseconds since the epoch as a protobuf timestamp.
pub(super) fn ts_from_ns(ns: u64) -> Timestamp {
    let mut t = Timestamp::new();
    t.seconds = (ns / 1_000_000_000) as i64;
    t.nanos = (ns % 1_000_000_000) as i32;
    t
}

/// Runs `f` on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> TtrpcResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| err(Code::INTERNAL, format!("worker failed: {e}")))
}
