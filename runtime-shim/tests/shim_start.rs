//! `containerd-shim-kata-like-v2 start` and `-info` as containerd runs
//! them: the 2.3+ bootstrap protocol (a BootstrapParams message on stdin,
//! a BootstrapResult on stdout), the legacy form, failed starts (no
//! process, no socket left), and the socket removed at a normal exit. No
//! VM is involved: the server is asked to shut down before any task.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::shim::shim::ShutdownRequest;
use containerd_shim::protos::shim::shim_ttrpc::TaskClient;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::introspection::RuntimeInfo;
use kata_like_runtime::shim::bootstrap::proto::{BootstrapParams, BootstrapResult};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-kata-like-v2");

struct Rig {
    dir: tempfile::TempDir,
    _ttrpc: Option<UnixListener>,
    /// containerd's end of the bundle's `log` FIFO (the server logs there).
    _log: std::fs::File,
}

impl Rig {
    /// A bundle directory, and containerd's ttrpc socket if `with_ttrpc`
    /// (the server connects its event publisher there at start).
    fn new(with_ttrpc: bool) -> Rig {
        let dir = tempfile::Builder::new().prefix("kl-start-").tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("bundle")).expect("bundle");
        std::fs::create_dir_all(dir.path().join("s")).expect("socket dir");
        let ttrpc = with_ttrpc.then(|| UnixListener::bind(dir.path().join("ttrpc.sock")).expect("ttrpc listener"));
        let fifo = dir.path().join("bundle/log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("log fifo");
        let log = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("open the log fifo");
        Rig { dir, _ttrpc: ttrpc, _log: log }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn params(&self, id: &str) -> BootstrapParams {
        let mut p = BootstrapParams::new();
        p.instance_id = id.into();
        p.namespace = "default".into();
        p.containerd_version = "2.3.0".into();
        p.containerd_ttrpc_address = self.path("ttrpc.sock");
        p.containerd_grpc_address = self.path("containerd.sock");
        p.socket_dir = Some(self.path("s"));
        p
    }

    /// Runs the shim with `args` and `stdin`, in the bundle directory.
    fn run(&self, args: &[&str], stdin: &[u8], env: &[(&str, String)]) -> (i32, Vec<u8>, String) {
        let mut child = Command::new(SHIM)
            .args(args)
            .current_dir(self.dir.path().join("bundle"))
            .env_remove("TTRPC_ADDRESS")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the shim");
        child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
        let out = child.wait_with_output().expect("wait");
        (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn sockets(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("s"))
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }
}

/// Shim server processes of this rig (their command line names its dir).
fn servers(rig: &Rig) -> Vec<u32> {
    let needle = rig.dir.path().display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c).contains(&needle) && String::from_utf8_lossy(&c).contains("-socket")
                })
                .unwrap_or(false)
        })
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn shutdown(address: &str) {
    let client = ttrpc::Client::connect(address).expect("connect to the shim");
    let task = TaskClient::new(client);
    task.shutdown(ttrpc::context::with_timeout(10_000_000_000), &ShutdownRequest::new()).expect("Shutdown");
}

#[test]
fn bootstrap_params_start_a_server_that_answers_and_cleans_up_at_exit() {
    let rig = Rig::new(true);
    let params = rig.params("boot-1");
    let (code, stdout, stderr) = rig.run(
        &["-namespace", "default", "-id", "boot-1", "-address", &rig.path("containerd.sock"), "start"],
        &params.write_to_bytes().expect("encode"),
        &[],
    );
    assert_eq!(code, 0, "start failed: {stderr}");
    let result = BootstrapResult::parse_from_bytes(&stdout).expect("stdout is a BootstrapResult");
    assert_eq!(result.version, 2, "task API v2");
    assert_eq!(result.protocol, "ttrpc");
    let socket = result.address.strip_prefix("unix://").expect("a unix address").to_string();
    assert!(Path::new(&socket).starts_with(rig.dir.path().join("s")), "in the directory containerd named: {socket}");
    assert!(UnixStream::connect(&socket).is_ok(), "the server answers on {socket}");
    assert_eq!(servers(&rig).len(), 1, "one server");

    // A second container of the same instance finds the running server.
    let (code, stdout, stderr) = rig.run(
        &["-namespace", "default", "-id", "boot-1", "-address", &rig.path("containerd.sock"), "start"],
        &params.write_to_bytes().expect("encode"),
        &[],
    );
    assert_eq!(code, 0, "second start: {stderr}");
    assert_eq!(BootstrapResult::parse_from_bytes(&stdout).expect("result").address, result.address);
    wait_until("the second server to leave", || servers(&rig).len() == 1);

    shutdown(&result.address);
    wait_until("the server to exit", || servers(&rig).is_empty());
    assert!(rig.sockets().is_empty(), "a normal exit removes the socket: {:?}", rig.sockets());
}

#[test]
fn legacy_start_prints_the_address() {
    let rig = Rig::new(true);
    let address = rig.path("containerd.sock");
    let (code, stdout, stderr) = rig.run(
        &["-namespace", "default", "-id", "legacy-1", "-address", &address, "start"],
        &[],
        &[("TTRPC_ADDRESS", rig.path("ttrpc.sock"))],
    );
    assert_eq!(code, 0, "start failed: {stderr}");
    let printed = String::from_utf8(stdout).expect("text");
    assert!(printed.starts_with("unix:///run/containerd/s/"), "{printed}");
    shutdown(&printed);
    wait_until("the server to exit", || servers(&rig).is_empty());
    assert!(!Path::new(printed.trim_start_matches("unix://")).exists(), "socket removed at exit");
}

#[test]
fn failed_starts_leave_no_process_and_no_socket() {
    // containerd's ttrpc socket is missing: the server cannot publish
    // events and exits; start must say so and leave nothing.
    let rig = Rig::new(false);
    let (code, stdout, stderr) = rig.run(
        &["-namespace", "default", "-id", "fail-1", "-address", &rig.path("containerd.sock"), "start"],
        &rig.params("fail-1").write_to_bytes().expect("encode"),
        &[],
    );
    assert_ne!(code, 0, "start must fail: {}", String::from_utf8_lossy(&stdout));
    assert!(stderr.contains("shim server"), "{stderr}");
    assert!(servers(&rig).is_empty(), "no process left");
    assert!(rig.sockets().is_empty(), "no socket left: {:?}", rig.sockets());

    // Params for another instance: refused before anything is spawned.
    let rig = Rig::new(true);
    let (code, _, stderr) = rig.run(
        &["-namespace", "default", "-id", "fail-2", "-address", &rig.path("containerd.sock"), "start"],
        &rig.params("someone-else").write_to_bytes().expect("encode"),
        &[],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("someone-else") && stderr.contains("fail-2"), "{stderr}");
    assert!(servers(&rig).is_empty() && rig.sockets().is_empty());
}

#[test]
fn info_answers_a_runtime_info() {
    let rig = Rig::new(false);
    let (code, stdout, stderr) = rig.run(&["-info"], &[], &[]);
    assert_eq!(code, 0, "-info failed: {stderr}");
    let info = RuntimeInfo::parse_from_bytes(&stdout).expect("containerd's RuntimeInfo");
    assert_eq!(info.name, "io.containerd.kata-like.v2");
    assert!(!info.version.version.is_empty());
    let features: serde_json::Value = serde_json::from_slice(&info.features.value).expect("features JSON");
    assert!(features["ociVersionMax"].is_string(), "{features}");
}
