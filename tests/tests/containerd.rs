//! The containerd shim against a real containerd (Debian's), through `ctr`.
//! Each test boots microVMs: `#[ignore]`d, run by scripts/test.sh.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use test_infra::containerd::{Containerd, IMAGE, RUNTIME};

fn setup(test: &str) -> Option<Containerd> {
    test_infra::vm_test(test)?;
    if let Some(reason) = test_infra::containerd::unavailable() {
        test_infra::skip(test, &reason);
        return None;
    }
    Some(Containerd::start().unwrap_or_else(|e| panic!("{test}: {e}")))
}

fn assert_clean(c: &Containerd) {
    let left = c.wait_clean(Duration::from_secs(30));
    assert!(left.is_empty(), "leftovers: {left:#?}\n{}", c.log_tail());
}

#[test]
#[ignore = "boots a microVM through containerd"]
fn ctr_run_output_exit_code_env_cwd_user_and_stdin() {
    let Some(c) = setup("ctr_run_output_exit_code_env_cwd_user_and_stdin") else { return };
    let mut child = c
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--env",
            "FOO=bar",
            "--cwd",
            "/tmp",
            "--user",
            "1000:1000",
            IMAGE,
            "basics",
            "sh",
            "-c",
            "echo hello; cat; echo after-eof; pwd; id -u; id -g; echo foo=$FOO; exit 7",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctr");
    child.stdin.take().expect("stdin").write_all(b"piped-in\n").expect("write stdin");
    let out = child.wait_with_output().expect("ctr run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "exit code; stderr: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.log_tail()
    );
    assert_eq!(stdout, "hello\npiped-in\nafter-eof\n/tmp\n1000\n1000\nfoo=bar\n", "{}", c.log_tail());
    assert_clean(&c);
}

fn task_status(c: &Containerd, id: &str) -> String {
    let out = c.ctr(&["task", "ls"]).expect("task ls");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        .unwrap_or_default()
}

fn ok(c: &Containerd, args: &[&str]) -> String {
    let out = c.ctr(args).expect("ctr");
    assert!(out.status.success(), "ctr {args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), c.log_tail());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "boots a microVM through containerd"]
fn exec_pids_pause_resume_stats_and_signals() {
    let Some(c) = setup("exec_pids_pause_resume_stats_and_signals") else { return };
    let id = "life";
    ok(
        &c,
        &[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            IMAGE,
            id,
            "sh",
            "-c",
            "trap 'exit 42' TERM; while true; do sleep 1; done",
        ],
    );
    assert_eq!(task_status(&c, id), "RUNNING");

    // Exec into the running container; its output comes back.
    let exec = ok(&c, &["task", "exec", "--exec-id", "e1", id, "sh", "-c", "echo exec-ok; hostname >/dev/null"]);
    assert_eq!(exec, "exec-ok\n");

    // PIDs are the guest's: the init is not a host process running sh.
    let ps = ok(&c, &["task", "ps", id]);
    let pids: Vec<u32> = ps.lines().skip(1).filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect();
    assert!(!pids.is_empty(), "{ps}");
    let task_pid: u32 = ok(&c, &["task", "ls"])
        .lines()
        .find(|l| l.starts_with(id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("task pid");
    assert!(pids.contains(&task_pid), "task pid {task_pid} in {pids:?}");
    let host_comm = std::fs::read_to_string(format!("/proc/{task_pid}/comm")).unwrap_or_default();
    assert_ne!(host_comm.trim(), "sh", "pid {task_pid} is a host process: the workload must run in the guest");

    // Pause and resume.
    ok(&c, &["task", "pause", id]);
    assert_eq!(task_status(&c, id), "PAUSED");
    ok(&c, &["task", "resume", id]);
    assert_eq!(task_status(&c, id), "RUNNING");

    // Metrics from the guest cgroup.
    let metrics = ok(&c, &["task", "metrics", id]);
    assert!(metrics.contains("memory.usage_in_bytes") || metrics.contains("memory"), "{metrics}");
    assert!(metrics.lines().count() > 2, "{metrics}");

    // SIGKILL to an exec'd process, then SIGTERM to the init (exit 42).
    let mut sleeper = c.ctr_command(&["task", "exec", "--exec-id", "k1", id, "sleep", "600"]).spawn().expect("exec");
    std::thread::sleep(Duration::from_secs(5));
    ok(&c, &["task", "kill", "--exec-id", "k1", "--signal", "SIGKILL", id]);
    let status = sleeper.wait().expect("exec exit");
    assert_eq!(status.code(), Some(137), "SIGKILLed exec exits 128+9");
    ok(&c, &["task", "kill", "--signal", "SIGTERM", id]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while task_status(&c, id) != "STOPPED" {
        assert!(std::time::Instant::now() < deadline, "task did not stop after SIGTERM\n{}", c.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(&c, &["task", "delete", id]);
    ok(&c, &["container", "delete", id]);
    assert_clean(&c);
}

#[test]
#[ignore = "boots microVMs through containerd"]
fn bad_input_gives_clear_errors_and_no_leaks() {
    let Some(c) = setup("bad_input_gives_clear_errors_and_no_leaks") else { return };
    // A binary that is not in the image.
    let (_, stderr, code) = c.run("nobin", &[], &["/bin/no-such-binary"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("no-such-binary") && stderr.contains("not found"), "{stderr}");
    let _ = c.ctr(&["container", "delete", "nobin"]);
    // A config path that does not exist.
    let (_, stderr, code) = c.run("badcfg", &["--runtime-config-path", "/nonexistent/kata-like.toml"], &["true"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent/kata-like.toml"), "{stderr}");
    let _ = c.ctr(&["container", "delete", "badcfg"]);
    // virtiofsd that cannot be started.
    let cfg = c.kata_state.with_file_name("no-virtiofsd.toml");
    std::fs::write(
        &cfg,
        format!("state_root = \"{}\"\nvirtiofsd = \"/nonexistent/virtiofsd\"\n", c.kata_state.display()),
    )
    .expect("config");
    let (_, stderr, code) = c.run("novfs", &["--runtime-config-path", &cfg.display().to_string()], &["true"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("virtiofsd") && stderr.contains("/nonexistent/virtiofsd"), "{stderr}");
    let _ = c.ctr(&["container", "delete", "novfs"]);
    assert_clean(&c);
}

#[test]
#[ignore = "boots 15 microVMs through containerd"]
fn sequential_and_concurrent_runs_leave_nothing_behind() {
    let Some(c) = setup("sequential_and_concurrent_runs_leave_nothing_behind") else { return };
    for i in 0..10 {
        let (out, err, code) = c.run(&format!("seq{i}"), &[], &["echo", &format!("run-{i}")]);
        assert_eq!((out.as_str(), code), (format!("run-{i}\n").as_str(), 0), "{err}\n{}", c.log_tail());
    }
    assert_clean(&c);
    let c = std::sync::Arc::new(c);
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let c = c.clone();
            std::thread::spawn(move || c.run(&format!("par{i}"), &[], &["echo", &format!("par-{i}")]))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (out, err, code) = h.join().expect("thread");
        assert_eq!((out, code), (format!("par-{i}\n"), 0), "{err}\n{}", c.log_tail());
    }
    assert_clean(&c);
}
