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

/// A failed create, start or exec as containerd has always heard it: the
/// agent's refusal as FAILED_PRECONDITION (containerd reads NOT_FOUND and
/// ALREADY_EXISTS on these calls as statements about the task itself),
/// anything else as [`core_err`] says.
pub(super) fn task_err(e: CoreError) -> ttrpc::Error {
    match e {
        CoreError::Agent(e) => err(Code::FAILED_PRECONDITION, e.message()),
        other => core_err(other),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn code(e: ttrpc::Error) -> Code {
        match e {
            ttrpc::Error::RpcStatus(s) => s.code.enum_value_or_default(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn core_errors_map_to_containerd_codes_once() {
        let cases = [
            (CoreError::Invalid("x".into()), Code::INVALID_ARGUMENT),
            (CoreError::NotFound("x".into()), Code::NOT_FOUND),
            (CoreError::Exists("x".into()), Code::ALREADY_EXISTS),
            (CoreError::WrongState("x".into()), Code::FAILED_PRECONDITION),
            (CoreError::Unavailable("x".into()), Code::UNAVAILABLE),
            (CoreError::Failed("x".into()), Code::INTERNAL),
        ];
        for (e, want) in cases {
            assert_eq!(code(core_err(e)), want);
        }
    }

    #[test]
    fn an_agent_refusal_keeps_its_code_except_on_task_calls() {
        // The agent's ttrpc crate, not necessarily containerd-shim's.
        use kata_like_protocol::ttrpc as agent_ttrpc;
        let refused = || {
            let status = agent_ttrpc::get_status(agent_ttrpc::Code::NOT_FOUND, "no such file: /bin/nope");
            CoreError::Agent(AgentClientError::Rpc {
                method: "CreateContainer",
                source: agent_ttrpc::Error::RpcStatus(status),
            })
        };
        assert_eq!(code(core_err(refused())), Code::NOT_FOUND);
        let e = task_err(refused());
        let ttrpc::Error::RpcStatus(status) = &e else { panic!("{e:?}") };
        assert_eq!(status.code.enum_value_or_default(), Code::FAILED_PRECONDITION);
        assert_eq!(status.message, "no such file: /bin/nope");
    }
}
