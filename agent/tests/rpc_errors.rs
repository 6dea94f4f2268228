//! Unknown and malformed requests get ttrpc errors and the agent keeps
//! serving: as PID 1 in the guest a crash would panic the kernel. The agent
//! runs on the host here (`--listen unix://...`); no VM needed.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use kata_like_protocol::agent::{HealthRequest, RunProcessRequest};
use kata_like_protocol::agent_ttrpc::AgentServiceClient;

const AGENT: &str = env!("CARGO_BIN_EXE_kata-like-agent");
const SERVICE: &str = "katalike.agent.v1.AgentService";

struct Agent {
    child: Child,
    _dir: tempfile::TempDir,
    address: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Agent {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("agent.sock");
    let address = format!("unix://{}", socket.display());
    let child = Command::new(AGENT).args(["--listen", &address]).spawn().expect("start the agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Agent { child, _dir: dir, address }
}

/// Sends a raw request that must be refused with a ttrpc status (not a
/// dropped connection, which is what a crashed agent would give).
fn refused(client: &ttrpc::Client, method: &str, payload: Vec<u8>) -> ttrpc::Status {
    let mut req = ttrpc::Request::new();
    req.service = SERVICE.to_string();
    req.method = method.to_string();
    req.payload = payload;
    req.timeout_nano = 5_000_000_000;
    match client.request(req) {
        Err(ttrpc::Error::RpcStatus(status)) => status,
        other => panic!("{method}: expected an error status, got {other:?}"),
    }
}

#[test]
fn unknown_methods_and_garbage_get_errors_and_the_agent_keeps_serving() {
    let agent = start();
    let client = ttrpc::Client::connect(&agent.address).expect("connect");

    let unknown = refused(&client, "NoSuchMethod", vec![]);
    assert_eq!(unknown.code.value(), ttrpc::Code::INVALID_ARGUMENT as i32, "{unknown:?}");
    assert!(unknown.message.contains("does not exist"), "{unknown:?}");

    let garbage = refused(&client, "RunProcess", vec![0xff; 64]);
    assert_eq!(garbage.code.value(), ttrpc::Code::INVALID_ARGUMENT as i32, "{garbage:?}");

    let typed = AgentServiceClient::new(client);
    let ctx = || ttrpc::context::with_timeout(5_000_000_000);
    let empty = typed.run_process(ctx(), &RunProcessRequest::new()).unwrap_err();
    assert!(empty.to_string().contains("args is empty"), "{empty}");
    let mut nul = RunProcessRequest::new();
    nul.args = vec!["sh\0x".into()];
    assert!(typed.run_process(ctx(), &nul).unwrap_err().to_string().contains("NUL"));

    let health = typed.health(ctx(), &HealthRequest::new()).expect("still serving");
    assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
}
