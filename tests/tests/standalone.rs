//! The runc-compatible CLI on an OCI bundle, without containerd or
//! Docker: `run`, and the create/start/state/kill/delete lifecycle with the
//! runtime spec's MUSTs and hooks. Boots microVMs: `#[ignore]`d, run by
//! scripts/test.sh.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_infra::Artifacts;

/// A bundle whose rootfs is Debian's static busybox with a few applets.
fn bundle(dir: &Path, args: &[&str]) -> PathBuf {
    let bundle = dir.join("bundle");
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).expect("mkdir rootfs");
    for d in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(bundle.join("rootfs").join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
    for applet in ["sh", "echo", "sleep", "cat", "id"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("symlink");
    }
    let status = Command::new(cli()).arg("spec").arg("--bundle").arg(&bundle).status().expect("kata-like spec");
    assert!(status.success(), "kata-like spec");
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read spec")).expect("parse spec");
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin", "GREETING=standalone"]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("write spec");
    bundle
}

fn cli() -> PathBuf {
    Artifacts::locate().map(|a| a.cli).unwrap_or_else(|e| panic!("{e}"))
}

/// A config with the test VM size, generous timeouts (emulated guest
/// kernel, shared cores) and the suite's VM templates, unless `dir` has a
/// `cold` marker (this path's cold-boot test).
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("kata-like.toml");
    let templates = if dir.join("cold").exists() {
        test_infra::containerd::COLD_BOOT.to_string()
    } else {
        test_infra::containerd::templated_runtime_config()
    };
    let text = format!(
        "memory_mib = 128\nboot_timeout_secs = 300\nrpc_timeout_secs = 240\nstate_root = \"{}\"\n{templates}",
        dir.join("vm-state").display()
    );
    std::fs::write(&path, text).expect("config");
    path
}

fn kata_like(dir: &Path, args: &[&str]) -> Output {
    Command::new(cli())
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--config")
        .arg(config(dir))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("kata-like")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Nothing of the run is left: no monitor, VMM or virtiofsd, no mounts,
/// no container record, no VM state (the boot-slot locks and the empty
/// control-socket directory stay, as lock directories do).
fn assert_clean(dir: &Path) {
    let needle = dir.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let procs = test_infra::processes_with(&[&needle]);
        let mounts = test_infra::mounts_under(&needle);
        let listed = |d: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(d).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
        };
        let mut state = listed(&dir.join("root"));
        state.extend(
            listed(&dir.join("vm-state"))
                .into_iter()
                .filter(|p| !(p.ends_with("boot-slots") || p.ends_with("oci") && listed(p).is_empty())),
        );
        if procs.is_empty() && mounts.is_empty() && state.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left behind: vmm {procs:?}, mounts {mounts:?}, state {state:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Force-deletes a container when a test ends, passed or not, so a
/// failure leaves no monitor or VM running.
struct ForceDelete(PathBuf, &'static str);

impl Drop for ForceDelete {
    fn drop(&mut self) {
        let _ = kata_like(&self.0, &["delete", "--force", self.1]);
    }
}

#[test]
#[ignore = "boots a microVM"]
fn run_prints_output_and_exits_with_the_container_status() {
    if test_infra::vm_test("run_prints_output_and_exits_with_the_container_status").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // The standalone path's cold-boot test (the others restore templates).
    std::fs::write(dir.path().join("cold"), "").expect("marker");
    let b = bundle(dir.path(), &["sh", "-c", "echo hello-$GREETING; echo to-stderr >&2; exit 3"]);
    let out = kata_like(dir.path(), &["run", "--bundle", &b.display().to_string(), "c1"]);
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello-standalone\n");
    assert!(text(&out.stderr).contains("to-stderr"), "{}", text(&out.stderr));
    // A foreground run leaves no record.
    let state = kata_like(dir.path(), &["state", "c1"]);
    assert!(!state.status.success());
    assert!(text(&state.stderr).contains("c1 does not exist"), "{}", text(&state.stderr));
    assert_clean(dir.path());
}

#[test]
#[ignore = "boots a microVM"]
fn detached_container_has_state_takes_signals_and_is_deleted() {
    if test_infra::vm_test("detached_container_has_state_takes_signals_and_is_deleted").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // "trapped" tells the test the handler is in place: a signal that
    // arrives before would be ignored (sh is its PID namespace's init).
    let b = bundle(dir.path(), &["sh", "-c", "trap 'exit 42' TERM; echo trapped; sleep 100000 & wait"]);
    let b = b.display().to_string();
    // The monitor keeps the stdio it was given: send it to files, not pipes
    // this test would wait on.
    let log = std::fs::File::create(dir.path().join("out.log")).expect("log");
    let status = Command::new(cli())
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--config")
        .arg(config(dir.path()))
        .args(["run", "--detach", "--bundle", &b, "c2"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .status()
        .expect("run -d");
    let out_log = || std::fs::read_to_string(dir.path().join("out.log")).unwrap_or_default();
    let _guard = ForceDelete(dir.path().to_path_buf(), "c2");
    assert!(status.success(), "run --detach: {}", out_log());

    let state: serde_json::Value =
        serde_json::from_slice(&kata_like(dir.path(), &["state", "c2"]).stdout).expect("state json");
    assert_eq!(state["status"], "running", "{state}");
    assert_eq!(state["id"], "c2");
    assert_eq!(state["bundle"], b.as_str());
    assert!(state["pid"].as_u64().unwrap_or(0) > 1, "{state}");

    // A second container with the same ID is refused, and a running one
    // is not deleted without --force.
    let dup = kata_like(dir.path(), &["run", "--bundle", &b, "c2"]);
    assert!(text(&dup.stderr).contains("c2 already exists"), "{}", text(&dup.stderr));
    let del = kata_like(dir.path(), &["delete", "c2"]);
    assert!(text(&del.stderr).contains("not stopped"), "{}", text(&del.stderr));

    let deadline = Instant::now() + Duration::from_secs(240);
    while !out_log().contains("trapped") {
        assert!(Instant::now() < deadline, "the container never printed: {}", out_log());
        std::thread::sleep(Duration::from_millis(500));
    }
    let kill = kata_like(dir.path(), &["kill", "c2", "TERM"]);
    assert!(kill.status.success(), "kill: {}", text(&kill.stderr));
    let deadline = Instant::now() + Duration::from_secs(240);
    let stopped = loop {
        let state: serde_json::Value =
            serde_json::from_slice(&kata_like(dir.path(), &["state", "c2"]).stdout).expect("state json");
        if state["status"] == "stopped" {
            break state;
        }
        assert!(Instant::now() < deadline, "not stopped after SIGTERM: {state}\n{}", out_log());
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(stopped["exitStatus"], 42, "{stopped}");
    let del = kata_like(dir.path(), &["delete", "c2"]);
    assert!(del.status.success(), "delete: {}", text(&del.stderr));
    assert_clean(dir.path());
}

/// A hook that appends its argv[0] and the state it got on stdin to
/// `log` (one line each), failing when its name says so.
fn hook(log: &Path, name: &str) -> serde_json::Value {
    let script = format!("read -r state; echo \"$0 $state\" >> {}; case $0 in fail*) exit 9;; esac", log.display());
    serde_json::json!({"path": "/bin/sh", "args": [name, "-c", script], "env": ["PATH=/usr/bin:/bin"]})
}

fn set_hooks(bundle: &Path, hooks: serde_json::Value) {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    spec["hooks"] = hooks;
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).expect("json")).expect("write");
}

fn state_of(dir: &Path, id: &str) -> serde_json::Value {
    let out = kata_like(dir, &["state", id]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("state {id}: {e}: {}", text(&out.stderr)))
}

#[test]
#[ignore = "boots a microVM"]
fn create_start_kill_delete_follow_the_runtime_spec() {
    if test_infra::vm_test("create_start_kill_delete_follow_the_runtime_spec").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let hooks_log = dir.path().join("hooks.log");
    let b = bundle(dir.path(), &["sh", "-c", "echo started; trap 'echo got-TERM; exit 42' TERM; sleep 100000 & wait"]);
    set_hooks(
        &b,
        serde_json::json!({
            "prestart": [hook(&hooks_log, "prestart")],
            "createRuntime": [hook(&hooks_log, "createRuntime")],
            "createContainer": [hook(&hooks_log, "createContainer")],
            "startContainer": [hook(&hooks_log, "startContainer")],
            "poststart": [hook(&hooks_log, "failing-poststart")],
            "poststop": [hook(&hooks_log, "poststop")],
        }),
    );
    let bs = b.display().to_string();
    let hooks_run = || std::fs::read_to_string(&hooks_log).unwrap_or_default();
    let hook_names = || hooks_run().lines().map(|l| l.split(' ').next().unwrap_or("").to_string()).collect::<Vec<_>>();
    let out_path = dir.path().join("out.log");
    let out = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let pid_file = dir.path().join("c.pid");
    // create's stdio is the container's: a file here, as a caller's pipe.
    let log = std::fs::File::create(&out_path).expect("log");
    let created = Command::new(cli())
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--config")
        .arg(config(dir.path()))
        .args(["create", "--bundle", &bs, "--pid-file"])
        .arg(&pid_file)
        .arg("c3")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .status()
        .expect("create");
    let _guard = ForceDelete(dir.path().to_path_buf(), "c3");
    assert!(created.success(), "create: {}", out());
    // Created: the host process exists, the user program has not run.
    let state = state_of(dir.path(), "c3");
    assert_eq!(state["status"], "created", "{state}");
    let pid: u32 = std::fs::read_to_string(&pid_file).expect("pid file").trim().parse().expect("pid");
    assert_eq!(state["pid"], pid, "{state}");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the container's host process {pid} is not running");
    assert!(!out().contains("started"), "create ran the program: {}", out());
    assert_eq!(hook_names(), ["prestart", "createRuntime", "createContainer"], "{}", hooks_run());
    assert!(hooks_run().contains(r#""status":"creating""#), "hooks get the state: {}", hooks_run());
    assert!(hooks_run().contains(&format!(r#""pid":{pid}"#)), "hooks get the pid: {}", hooks_run());

    // Start runs it once; a second start fails.
    let start = kata_like(dir.path(), &["start", "c3"]);
    assert!(start.status.success(), "start: {}", text(&start.stderr));
    assert_eq!(state_of(dir.path(), "c3")["status"], "running");
    let again = kata_like(dir.path(), &["start", "c3"]);
    assert_eq!(again.status.code(), Some(1), "a second start must fail");
    assert!(text(&again.stderr).contains("running"), "{}", text(&again.stderr));
    // The failing poststart hook is logged, the container runs on.
    assert_eq!(
        hook_names(),
        ["prestart", "createRuntime", "createContainer", "startContainer", "failing-poststart"],
        "{}",
        hooks_run()
    );
    let deadline = Instant::now() + Duration::from_secs(240);
    while !out().contains("started") {
        assert!(Instant::now() < deadline, "never started: {}", out());
        std::thread::sleep(Duration::from_millis(200));
    }

    // exec in the foreground: its output and status.
    let exec = kata_like(dir.path(), &["exec", "c3", "sh", "-c", "echo in-exec; exit 5"]);
    assert_eq!(exec.status.code(), Some(5), "exec: {}", text(&exec.stderr));
    assert_eq!(text(&exec.stdout), "in-exec\n");
    let ps = kata_like(dir.path(), &["ps", "--format", "json", "c3"]);
    assert_eq!(text(&ps.stdout).trim(), format!("[{pid}]"), "{}", text(&ps.stderr));

    // delete of a running container fails and changes nothing.
    let del = kata_like(dir.path(), &["delete", "c3"]);
    assert_eq!(del.status.code(), Some(1));
    assert_eq!(state_of(dir.path(), "c3")["status"], "running");

    // pause/resume.
    let paused = kata_like(dir.path(), &["pause", "c3"]);
    assert!(paused.status.success(), "pause: {}", text(&paused.stderr));
    assert_eq!(state_of(dir.path(), "c3")["status"], "paused");
    let resumed = kata_like(dir.path(), &["resume", "c3"]);
    assert!(resumed.status.success(), "resume: {}", text(&resumed.stderr));
    assert_eq!(state_of(dir.path(), "c3")["status"], "running");

    // kill: the host process ends with the guest process's status.
    let kill = kata_like(dir.path(), &["kill", "c3", "TERM"]);
    assert!(kill.status.success(), "kill: {}", text(&kill.stderr));
    let deadline = Instant::now() + Duration::from_secs(240);
    let stopped = loop {
        let state = state_of(dir.path(), "c3");
        if state["status"] == "stopped" {
            break state;
        }
        assert!(Instant::now() < deadline, "not stopped after SIGTERM: {state}\n{}", out());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(stopped["exitStatus"], 42, "{stopped}");
    assert!(out().contains("got-TERM"), "{}", out());
    let kill = kata_like(dir.path(), &["kill", "c3", "TERM"]);
    assert_eq!(kill.status.code(), Some(1), "kill of a stopped container must fail");
    assert!(text(&kill.stderr).contains("not running"), "{}", text(&kill.stderr));
    assert!(!hook_names().contains(&"poststop".to_string()), "poststop runs at delete");
    let del = kata_like(dir.path(), &["delete", "c3"]);
    assert!(del.status.success(), "delete: {}", text(&del.stderr));
    assert_eq!(hook_names().last().map(String::as_str), Some("poststop"), "{}", hooks_run());
    let gone = kata_like(dir.path(), &["state", "c3"]);
    assert!(text(&gone.stderr).contains("does not exist"), "{}", text(&gone.stderr));
    assert_clean(dir.path());

    // A failing createRuntime hook fails create, naming it, and leaves nothing.
    set_hooks(&b, serde_json::json!({"createRuntime": [hook(&hooks_log, "fail-createRuntime")]}));
    let failed = kata_like(dir.path(), &["create", "--bundle", &bs, "c4"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(text(&failed.stderr).contains("createRuntime hook #0"), "{}", text(&failed.stderr));
    assert!(text(&failed.stderr).contains("exit status: 9"), "{}", text(&failed.stderr));
    assert_clean(dir.path());
}

#[test]
#[ignore = "needs /dev/kvm and the built artefacts; run with scripts/test.sh or `-- --ignored`"]
fn check_reports_whether_this_host_can_run_us() {
    if test_infra::vm_test("check_reports_whether_this_host_can_run_us").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let good = config(dir.path());
    let out = Command::new(cli()).arg("--config").arg(&good).arg("check").output().expect("kata-like check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "PASS  /dev/kvm: usable",
        "PASS  KVM capabilities",
        "PASS  virtiofsd:",
        "PASS  guest kernel:",
        "PASS  cgroups:",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(text.trim_end().ends_with("this host can run kata-like"), "{text}");
    // Whether templates exist for the configured shapes (sandbox and pod).
    for shape in ["VM template (1 vCPU, 128 MiB, no NIC): ", "VM template (1 vCPU, 128 MiB, NIC slot (MTU 1500)): "] {
        assert!(text.contains(shape), "missing {shape:?} in:\n{text}");
    }

    // A config whose kernel is missing: that line fails, with the fix.
    let bad = dir.path().join("bad.toml");
    let body = std::fs::read_to_string(&good).expect("read") + "kernel = \"/nonexistent/vmlinux\"\n";
    std::fs::write(&bad, body).expect("write");
    let out = Command::new(cli()).arg("--config").arg(&bad).arg("check").output().expect("kata-like check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  guest kernel: /nonexistent/vmlinux not found\n      fix: "), "{text}");
    assert!(text.contains("1 check(s) failed"), "{text}");
}
