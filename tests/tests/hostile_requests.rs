//! Malformed and hostile agent requests against a real agent in a real
//! microVM (issue 5): every one gets an error naming what is wrong, the
//! agent keeps serving, and nothing in the guest changes (no container,
//! cgroup, mount or process is left by a refused request).

use std::os::fd::IntoRawFd;
use std::time::Duration;

use kata_like_protocol::agent::{CreateContainerRequest, RunProcessRequest};
use kata_like_protocol::{hybrid_vsock, ttrpc, AgentClient, AgentClientError, AGENT_VSOCK_PORT};
use kata_like_runtime::vm::SandboxVm;
use test_infra::vm_test;

const SERVICE: &str = "katalike.agent.v1.AgentService";

/// What a refused request may have left in the guest: directories under
/// /run and the cgroup tree, the mount table and the process list.
const GUEST_STATE: &str =
    "find /run /sys/fs/cgroup -maxdepth 3 -type d | sort; cat /proc/mounts; ls /proc | grep -c '^[0-9]'";

fn guest_state(vm: &SandboxVm) -> String {
    let args: Vec<String> = ["sh", "-c", GUEST_STATE].iter().map(|s| s.to_string()).collect();
    let out = vm.run(&args, &[], "", &[]).expect("the agent runs the state listing");
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `payload` as method `method` on a fresh raw ttrpc connection and
/// returns the status the agent answered with.
fn raw_call(vm: &SandboxVm, method: &str, payload: Vec<u8>) -> ttrpc::Status {
    let stream =
        hybrid_vsock::connect(&vm.vsock_path(), AGENT_VSOCK_PORT, Duration::from_secs(10)).expect("vsock connect");
    let client = ttrpc::Client::new(stream.into_raw_fd()).expect("ttrpc client");
    let mut req = ttrpc::Request::new();
    req.service = SERVICE.to_string();
    req.method = method.to_string();
    req.payload = payload;
    req.timeout_nano = Duration::from_secs(30).as_nanos() as i64;
    match client.request(req) {
        Ok(res) => res.status.into_option().unwrap_or_default(),
        Err(ttrpc::Error::RpcStatus(status)) => status,
        Err(e) => panic!("{method}: the agent dropped the connection instead of answering: {e}"),
    }
}

fn spec(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "hostname": "h",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]}
    });
    edit(&mut spec);
    serde_json::to_vec(&spec).expect("json")
}

fn create(client: &AgentClient, req: &CreateContainerRequest) -> Result<(), AgentClientError> {
    client.create_container(req).map(drop)
}

#[test]
#[ignore = "boots a microVM; run with scripts/test.sh or `-- --ignored`"]
fn the_agent_refuses_malformed_and_hostile_requests_and_keeps_serving() {
    let Some(artifacts) = vm_test("the_agent_refuses_malformed_and_hostile_requests_and_keeps_serving") else {
        return;
    };
    let vm = SandboxVm::start(&artifacts.vm_spec()).expect("the VM boots and the agent answers");
    let before = guest_state(&vm);

    // Bytes that are no protobuf message of the method's request type.
    for method in ["RunProcess", "CreateContainer", "StartContainer", "WaitProcess", "SetupSandbox", "ConfigureNetwork"]
    {
        let status = raw_call(&vm, method, vec![0xff; 32]);
        assert_eq!(status.code(), ttrpc::Code::INVALID_ARGUMENT, "{method}: {status:?}");
        assert!(status.message().contains(&format!("malformed {method} request")), "{method}: {status:?}");
    }
    let status = raw_call(&vm, "NoSuchMethod", Vec::new());
    assert!(status.message().contains("NoSuchMethod does not exist"), "an unknown method: {status:?}");

    // Well-formed messages with hostile content.
    let client = AgentClient::connect(&vm.vsock_path(), Duration::from_secs(30)).expect("agent");
    type Edit = fn(&mut serde_json::Value);
    let specs: &[(&str, Edit, &str)] = &[
        ("rootfs climbing out", |s| s["root"]["path"] = "../../../etc".into(), "root.path"),
        ("mount escaping with ..", |s| s["mounts"][0]["destination"] = "/../../etc".into(), "mounts[0].destination"),
        ("unknown namespace", |s| s["linux"]["namespaces"][0]["type"] = "nosuch".into(), "nosuch"),
        (
            "huge rlimit",
            |s| s["process"]["rlimits"] = serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1, "hard": u64::MAX}]),
            "RLIMIT_NOFILE",
        ),
        ("not JSON", |s| *s = serde_json::Value::String("{".into()), "spec"),
    ];
    for (what, edit, wanted) in specs {
        let mut req = CreateContainerRequest::new();
        req.container_id = "hostile".into();
        req.spec_json = spec(edit);
        req.rootfs = "hostile/rootfs".into();
        let e = create(&client, &req).expect_err(what);
        let status = e.agent_status().unwrap_or_else(|| panic!("{what}: not an answer: {e}"));
        assert!(status.message().contains(wanted), "{what}: the error does not name {wanted:?}: {status:?}");
    }
    let bad_ids = ["../escape", "", "a/b"];
    for id in bad_ids {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.spec_json = spec(|_| {});
        req.rootfs = "x/rootfs".into();
        let e = create(&client, &req).expect_err(id);
        assert!(e.agent_status().is_some(), "container id {id:?}: not an answer: {e}");
    }
    let mut req = RunProcessRequest::new();
    let e = client.run_process(&req).expect_err("no arguments");
    assert!(e.agent_status().is_some_and(|s| s.message().contains("args")), "{e}");
    req.args = vec!["sh\0x".into()];
    let e = client.run_process(&req).expect_err("NUL in an argument");
    assert!(e.agent_status().is_some_and(|s| s.message().contains("NUL")), "{e}");

    // Still serving, and nothing changed.
    client.health().expect("the agent still answers");
    let after = guest_state(&vm);
    assert_eq!(before, after, "a refused request changed the guest");
}
