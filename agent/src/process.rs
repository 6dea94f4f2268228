//! RunProcess: start a process in the guest, feed its stdin, capture its
//! output (bounded), wait for it with an optional timeout.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kata_like_protocol::agent::{RunProcessRequest, RunProcessResponse};
use kata_like_protocol::MAX_CAPTURED_OUTPUT;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::reaper::{ExitState, Reaper};

/// PATH used when the request gives no environment.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// After the process exits, how long its output pipes may stay open (held by
/// a background grandchild) before we answer with what we have.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// Why a RunProcess request failed before the process ran.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The request is malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The program does not exist or is not executable.
    #[error("executable {0:?} not found or not executable")]
    NotFound(String),
    /// Spawning failed.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Finds `program` like execvp does: as given when it contains a '/',
/// otherwise in the directories of `path`.
pub fn resolve(program: &str, path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return is_executable(Path::new(program)).then(|| PathBuf::from(program));
    }
    path.split(':').filter(|dir| !dir.is_empty()).map(|dir| Path::new(dir).join(program)).find(|p| is_executable(p))
}

fn validate(req: &RunProcessRequest) -> Result<(), RunError> {
    let invalid = |msg: &str| Err(RunError::Invalid(msg.to_string()));
    match req.args.first() {
        None => return invalid("args is empty"),
        Some(arg0) if arg0.is_empty() => return invalid("args[0] is empty"),
        _ => {}
    }
    if req.args.iter().any(|a| a.contains('\0')) {
        return invalid("an argument contains a NUL byte");
    }
    if let Some(bad) = req.env.iter().find(|e| !e.contains('=') || e.starts_with('=') || e.contains('\0')) {
        return Err(RunError::Invalid(format!("environment entry {bad:?} is not KEY=VALUE")));
    }
    if !req.cwd.is_empty() && !req.cwd.starts_with('/') {
        return invalid("cwd must be an absolute path");
    }
    if !req.cwd.is_empty() && !Path::new(&req.cwd).is_dir() {
        return Err(RunError::Invalid(format!("cwd {:?} is not a directory", req.cwd)));
    }
    Ok(())
}

/// Captured output of one stream.
#[derive(Debug, Default)]
struct Capture {
    data: Vec<u8>,
    truncated: bool,
}

/// Reads `stream` to its end, keeping the first `MAX_CAPTURED_OUTPUT` bytes;
/// the rest is drained so that the process never blocks on a full pipe.
fn capture(mut stream: impl Read + Send + 'static) -> (Arc<Mutex<Capture>>, JoinHandle<()>) {
    let out = Arc::new(Mutex::new(Capture::default()));
    let sink = out.clone();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let mut cap = sink.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let room = MAX_CAPTURED_OUTPUT.saturating_sub(cap.data.len());
            cap.data.extend_from_slice(&buf[..n.min(room)]);
            cap.truncated |= n > room;
        }
    });
    (out, handle)
}

fn take(capture: &Mutex<Capture>) -> Capture {
    std::mem::take(&mut *capture.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// Runs the request to completion.
pub fn run(reaper: &Reaper, req: &RunProcessRequest) -> Result<RunProcessResponse, RunError> {
    validate(req)?;
    let mut env =
        if req.env.is_empty() { vec![format!("PATH={DEFAULT_PATH}"), "HOME=/".to_string()] } else { req.env.clone() };
    crate::host_env::add_inherited(&mut env);
    let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    let program = resolve(&req.args[0], path).ok_or_else(|| RunError::NotFound(req.args[0].clone()))?;

    let mut command = Command::new(&program);
    command
        .arg0(&req.args[0])
        .args(&req.args[1..])
        .env_clear()
        .envs(env.iter().filter_map(|e| e.split_once('=')))
        .current_dir(if req.cwd.is_empty() { "/" } else { &req.cwd })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills its descendants too.
        .process_group(0);
    // SAFETY: the closure only makes async-signal-safe calls (sigprocmask,
    // open, write, close) on a static path and a local signal set; it runs
    // in the child between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            // The agent's threads block the signals its signal loop reads;
            // with a pre_exec hook std forks instead of posix_spawn and
            // leaves that mask to the child, whose SIGCHLD would then never
            // arrive (a shell's `wait` hangs).
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // Not the agent's -1000: what we run may be chosen by the OOM
            // killer like any process.
            let fd = libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            Ok(())
        });
    }
    let (mut child, exited) =
        reaper.spawn(&mut command).map_err(|source| RunError::Spawn { program: req.args[0].clone(), source })?;
    let pid = child.id();

    if let Some(mut stdin) = child.stdin.take() {
        let input = req.stdin.clone();
        // A process that does not read its stdin gets EPIPE here; fine.
        std::thread::spawn(move || drop(stdin.write_all(&input)));
    }
    let (stdout, out_thread) = capture(child.stdout.take().ok_or_else(|| RunError::Invalid("no stdout pipe".into()))?);
    let (stderr, err_thread) = capture(child.stderr.take().ok_or_else(|| RunError::Invalid("no stderr pipe".into()))?);

    let mut timed_out = false;
    let state = if req.timeout_ms > 0 {
        match exited.recv_timeout(Duration::from_millis(u64::from(req.timeout_ms))) {
            Ok(state) => Some(state),
            Err(_) => {
                timed_out = true;
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
                exited.recv().ok()
            }
        }
    } else {
        exited.recv().ok()
    };

    // Output normally ends with the process; a grandchild that keeps the
    // pipes open must not hold the answer hostage.
    let deadline = std::time::Instant::now() + OUTPUT_GRACE;
    for handle in [out_thread, err_thread] {
        while !handle.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if handle.is_finished() {
            let _ = handle.join();
        }
    }
    let (out, err) = (take(&stdout), take(&stderr));
    let mut resp = RunProcessResponse::new();
    resp.pid = pid;
    match state {
        Some(ExitState::Exited(code)) => resp.exit_code = code,
        Some(ExitState::Signaled(signal)) => {
            resp.exit_code = -1;
            resp.signal = signal;
        }
        None => resp.exit_code = -1,
    }
    resp.stdout = out.data;
    resp.stdout_truncated = out.truncated;
    resp.stderr = err.data;
    resp.stderr_truncated = err.truncated;
    resp.timed_out = timed_out;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reaper::shared_for_tests;

    fn request(args: &[&str]) -> RunProcessRequest {
        let mut req = RunProcessRequest::new();
        req.args = args.iter().map(|s| s.to_string()).collect();
        req
    }

    #[test]
    fn output_exit_code_env_cwd_and_stdin() {
        let mut req = request(&["sh", "-c", "cat; echo \"$FOO\" in $(pwd); echo oops >&2; exit 3"]);
        req.env = vec!["FOO=bar".into(), "PATH=/usr/bin:/bin".into()];
        req.cwd = "/tmp".into();
        req.stdin = b"from stdin\n".to_vec();
        let resp = run(shared_for_tests(), &req).expect("runs");
        assert_eq!(resp.exit_code, 3);
        assert_eq!(String::from_utf8_lossy(&resp.stdout), "from stdin\nbar in /tmp\n");
        assert_eq!(resp.stderr, b"oops\n");
        assert!(resp.pid > 0);
    }

    /// The agent's threads block SIGCHLD and the power signals; what it
    /// runs must not inherit that (a shell's `wait` would never return).
    #[test]
    fn commands_start_with_no_blocked_signals() {
        let req = request(&["sh", "-c", "(true) & wait; grep -E '^SigBlk' /proc/self/status"]);
        let resp = std::thread::spawn(move || {
            let mut blocked = nix::sys::signal::SigSet::empty();
            blocked.add(nix::sys::signal::Signal::SIGCHLD);
            blocked.add(nix::sys::signal::Signal::SIGTERM);
            blocked.thread_block().expect("block");
            run(shared_for_tests(), &req).expect("runs")
        })
        .join()
        .expect("thread");
        assert_eq!(String::from_utf8_lossy(&resp.stdout), "SigBlk:\t0000000000000000\n");
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let mut req = request(&["sh", "-c", "sleep 30 & sleep 30"]);
        req.timeout_ms = 200;
        let started = std::time::Instant::now();
        let resp = run(shared_for_tests(), &req).expect("runs");
        assert!(resp.timed_out);
        assert_eq!((resp.exit_code, resp.signal), (-1, 9));
        assert!(started.elapsed() < Duration::from_secs(5), "the background sleep did not hold the answer");
    }

    #[test]
    fn large_output_is_truncated_not_blocking() {
        let req = request(&["sh", "-c", "head -c 3000000 /dev/zero"]);
        let resp = run(shared_for_tests(), &req).expect("runs");
        assert_eq!(resp.exit_code, 0);
        assert_eq!(resp.stdout.len(), MAX_CAPTURED_OUTPUT);
        assert!(resp.stdout_truncated);
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason() {
        let cases: [(&[&str], &str); 2] = [(&[], "args is empty"), (&[""], "args[0] is empty")];
        for (args, why) in cases {
            let err = run(shared_for_tests(), &request(args)).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
        }
        let err = run(shared_for_tests(), &request(&["no-such-binary-here"])).unwrap_err();
        assert!(matches!(err, RunError::NotFound(_)), "{err}");
        let mut req = request(&["true"]);
        req.cwd = "relative".into();
        assert!(run(shared_for_tests(), &req).unwrap_err().to_string().contains("absolute"));
        req.cwd = "/nonexistent".into();
        assert!(run(shared_for_tests(), &req).unwrap_err().to_string().contains("not a directory"));
        let mut req = request(&["true"]);
        req.env = vec!["NOEQUALS".into()];
        assert!(run(shared_for_tests(), &req).unwrap_err().to_string().contains("KEY=VALUE"));
    }

    #[test]
    fn resolve_follows_path() {
        assert_eq!(resolve("sh", "/nonexistent:/bin"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve("/bin/sh", ""), Some(PathBuf::from("/bin/sh")));
        assert_eq!(resolve("sh", "/nonexistent"), None);
        assert_eq!(resolve("/etc/passwd", ""), None, "not executable");
    }
}
