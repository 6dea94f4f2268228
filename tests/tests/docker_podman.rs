//! Docker and podman running containers in kata-like microVMs through the
//! runc-compatible CLI, against the real clients (Debian's docker.io 20.10
//! with its own dockerd and containerd, podman 4.3 with conmon). Every
//! container's VM starts from the suite's VM templates. After each check
//! nothing of the container is left: no monitor, VMM or virtiofsd, mount,
//! VM state or cgroup (its network namespace is its monitor's and goes
//! with it).
//!
//! `#[ignore]`d (they boot microVMs); scripts/test.sh runs them.

use std::io::{Read, Write};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use test_infra::docker::{Docker, Podman, IMAGE, RUNTIME};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(out: &Output) -> String {
    format!("status {:?}\nstdout: {}\nstderr: {}", out.status, text(&out.stdout), text(&out.stderr))
}

fn docker_or_skip(test: &str) -> Option<Docker> {
    test_infra::vm_test(test)?;
    if let Some(why) = test_infra::docker::docker_unavailable() {
        test_infra::skip(test, &why);
        return None;
    }
    Some(Docker::start().unwrap_or_else(|e| panic!("{test}: {e}")))
}

fn podman_or_skip(test: &str) -> Option<Podman> {
    test_infra::vm_test(test)?;
    if let Some(why) = test_infra::docker::podman_unavailable() {
        test_infra::skip(test, &why);
        return None;
    }
    Some(Podman::start().unwrap_or_else(|e| panic!("{test}: {e}")))
}

/// Runs the shell command `cmd` under `script`, so it has a terminal (for
/// `-t`); returns its output.
fn with_terminal(cmd: &str) -> Output {
    std::process::Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script (bsdutils)")
}

/// An HTTP GET of `/` on 127.0.0.1:`port`, retried until `timeout`.
fn http_get(port: u16, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        })();
        match attempt {
            Ok(body) if body.contains("200 OK") => return Ok(body),
            Ok(body) => last = body,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(last)
}

#[test]
#[ignore = "boots microVMs through Docker"]
fn docker_runs_containers_in_microvms() {
    let Some(d) = docker_or_skip("docker_runs_containers_in_microvms") else { return };
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--rm", "--runtime", RUNTIME];
        all.extend_from_slice(args);
        d.docker(&all)
    };
    // Output, and that it ran in the guest (its kernel is ours).
    let out = run(&[IMAGE, "sh", "-c", "echo hello from docker; cat /proc/version"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out.stdout).starts_with("hello from docker\n"), "{}", show(&out));
    assert!(text(&out.stdout).contains("kata-like"), "not our guest kernel: {}", show(&out));
    // The exit code.
    let out = run(&[IMAGE, "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    // stdin piped in with -i, to EOF.
    let mut child = d
        .command(&["run", "--rm", "-i", "--runtime", RUNTIME, IMAGE, "wc", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker run -i");
    let input = "x".repeat(100_000);
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(text(&out.stdout).trim(), "100000", "{}", show(&out));
    // A terminal with -t: the container's own pty.
    let out = with_terminal(&format!("{} run --rm -t --runtime {RUNTIME} {IMAGE} tty", d.client()));
    assert!(text(&out.stdout).trim().starts_with("/dev/pts/"), "{}", show(&out));
    let left = d.wait_clean("");
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
#[ignore = "boots microVMs through Docker"]
fn docker_exec_logs_pause_update_stop_and_kill() {
    let Some(d) = docker_or_skip("docker_exec_logs_pause_update_stop_and_kill") else { return };
    // A process that ignores SIGTERM: `docker stop` must end it by SIGKILL.
    let script = "trap '' TERM; echo started; while true; do sleep 1; done";
    let out = d.docker(&["run", "-d", "--name", "s1", "--runtime", RUNTIME, IMAGE, "sh", "-c", script]);
    assert!(out.status.success(), "{}", show(&out));
    let id = d.id("s1");
    let out = d.docker(&["exec", "s1", "sh", "-c", "echo from exec; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert_eq!(text(&out.stdout), "from exec\n");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !text(&d.docker(&["logs", "s1"]).stdout).contains("started") {
        assert!(Instant::now() < deadline, "docker logs never showed the output");
        std::thread::sleep(Duration::from_millis(500));
    }
    let top = d.docker(&["top", "s1"]);
    assert!(top.status.success(), "{}", show(&top));
    // pause and unpause.
    let out = d.docker(&["pause", "s1"]);
    assert!(out.status.success(), "{}", show(&out));
    let status = d.docker(&["inspect", "-f", "{{.State.Status}}", "s1"]);
    assert_eq!(text(&status.stdout).trim(), "paused");
    let out = d.docker(&["unpause", "s1"]);
    assert!(out.status.success(), "{}", show(&out));
    // update --memory reaches the container's cgroup in the guest.
    let out = d.docker(&["update", "--memory", "64m", "--memory-swap", "64m", "s1"]);
    assert!(out.status.success(), "{}", show(&out));
    let out = d.docker(&["exec", "s1", "cat", "/sys/fs/cgroup/memory.max"]);
    assert_eq!(text(&out.stdout).trim(), "67108864", "{}", show(&out));
    // The VM is in the container's host cgroup, where `docker stats` looks.
    let procs = std::fs::read_to_string(format!("/sys/fs/cgroup/memory/docker/{id}/cgroup.procs")).unwrap_or_default();
    assert!(procs.lines().count() >= 2, "VMM and virtiofsd are not in /docker/{id}: {procs:?}");
    // stop -t 5: SIGTERM is ignored, SIGKILL after the grace period.
    let begin = Instant::now();
    let out = d.docker(&["stop", "-t", "5", "s1"]);
    let took = begin.elapsed();
    assert!(out.status.success(), "{}", show(&out));
    eprintln!("docker stop -t 5 of a process ignoring SIGTERM took {took:.1?}");
    let code = d.docker(&["inspect", "-f", "{{.State.ExitCode}}", "s1"]);
    assert_eq!(text(&code.stdout).trim(), "137", "ended by SIGKILL");
    assert!(took >= Duration::from_secs(5), "SIGKILL came before the grace period: {took:?}");
    assert!(d.docker(&["rm", "s1"]).status.success());
    let left = d.wait_clean(&id);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
#[ignore = "boots microVMs through Docker"]
fn docker_publishes_a_port_of_a_server_in_the_guest() {
    let Some(d) = docker_or_skip("docker_publishes_a_port_of_a_server_in_the_guest") else { return };
    let port = 18_000 + (std::process::id() % 1000) as u16;
    let publish = format!("{port}:80");
    let out = d.docker(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &publish,
        "--runtime",
        RUNTIME,
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let id = d.id("web");
    let body = http_get(port, Duration::from_secs(120)).unwrap_or_else(|e| panic!("no answer on port {port}: {e}"));
    assert!(body.contains("hello from a kata-like microVM"), "{body}");
    // Its address is the bridge's, inside the guest.
    let ip = text(&d.docker(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "web"]).stdout).trim().to_string();
    let addrs = d.docker(&["exec", "web", "ip", "-4", "addr"]);
    assert!(text(&addrs.stdout).contains(&format!("inet {ip}/")), "{ip}: {}", show(&addrs));
    // docker kill: SIGKILL, exit 137.
    let out = d.docker(&["kill", "web"]);
    assert!(out.status.success(), "{}", show(&out));
    let code = d.docker(&["inspect", "-f", "{{.State.ExitCode}}", "web"]);
    assert_eq!(text(&code.stdout).trim(), "137");
    assert!(d.docker(&["rm", "web"]).status.success());
    let left = d.wait_clean(&id);
    assert!(left.is_empty(), "left behind: {left:?}");
    // --network none: loopback only.
    let out = d.docker(&["run", "--rm", "--network", "none", "--runtime", RUNTIME, IMAGE, "ip", "-o", "link"]);
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(text(&out.stdout).lines().count(), 1, "{}", show(&out));
}

#[test]
#[ignore = "boots microVMs through podman"]
fn podman_runs_containers_in_microvms() {
    let Some(p) = podman_or_skip("podman_runs_containers_in_microvms") else { return };
    let out = p.podman(&["run", "--rm", IMAGE, "sh", "-c", "echo hello from podman; cat /proc/version"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(text(&out.stdout).starts_with("hello from podman\n"), "{}", show(&out));
    assert!(text(&out.stdout).contains("kata-like"), "not our guest kernel: {}", show(&out));
    let out = p.podman(&["run", "--rm", IMAGE, "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    let mut child = p
        .command(&["run", "--rm", "-i", IMAGE, "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podman run -i");
    child.stdin.take().expect("stdin").write_all(b"piped through podman\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(text(&out.stdout), "piped through podman\n", "{}", show(&out));
    // A detached container, exec into it, stop it.
    let out =
        p.podman(&["run", "-d", "--name", "p1", IMAGE, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]);
    assert!(out.status.success(), "{}", show(&out));
    let id = text(&out.stdout).trim().to_string();
    let out = p.podman(&["exec", "p1", "sh", "-c", "echo from podman exec; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert_eq!(text(&out.stdout), "from podman exec\n");
    let out = p.podman(&["stop", "-t", "30", "p1"]);
    assert!(out.status.success(), "{}", show(&out));
    let code = p.podman(&["inspect", "-f", "{{.State.ExitCode}}", "p1"]);
    assert_eq!(text(&code.stdout).trim(), "0", "the TERM trap's exit");
    assert!(p.podman(&["rm", "p1"]).status.success());
    let left = p.wait_clean(&id);
    assert!(left.is_empty(), "left behind: {left:?}");
    // --network none.
    let out = p.podman(&["run", "--rm", "--network", "none", IMAGE, "ip", "-o", "link"]);
    assert_eq!(text(&out.stdout).lines().count(), 1, "{}", show(&out));
    let left = p.wait_clean("");
    assert!(left.is_empty(), "left behind: {left:?}");
}
