//! `exec`: a new process in a running container. Its host process (this
//! one in the foreground; with `--detach` a background copy whose PID goes
//! to `--pid-file`) connects its stdio to the guest process, forwards the
//! signals it gets to it, and ends the way it ended, like runc's exec.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::monitor::{drain, Notify};
use super::{console, link, signals, spawn_reporting, write_pid_file, CoreError, Options, State, TaskStatus};
use crate::sandbox::io::StdioPaths;

/// `exec`'s flags (runc's).
#[derive(Clone, Debug, Default)]
pub struct ExecArgs {
    /// A process.json (OCI `process`) instead of the arguments.
    pub process: Option<PathBuf>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Where to send the pty master.
    pub console_socket: Option<PathBuf>,
    /// Return once it runs.
    pub detach: bool,
    /// Where to write its host PID.
    pub pid_file: Option<PathBuf>,
    /// Working directory.
    pub cwd: Option<String>,
    /// KEY=VALUE, added to the container's environment.
    pub env: Vec<String>,
    /// UID[:GID].
    pub user: Option<String>,
    /// Extra groups.
    pub additional_gids: Vec<u32>,
    /// Set no_new_privileges.
    pub no_new_privs: bool,
    /// Host descriptors to pass (refused: they cannot reach a VM).
    pub preserve_fds: u32,
    /// The command and its arguments.
    pub args: Vec<String>,
}

/// The OCI process JSON to run: `--process FILE`, or the container's own
/// process with the flags' changes.
fn process_json(record: &State, args: &ExecArgs) -> Result<Vec<u8>, CoreError> {
    let mut process: Value = match &args.process {
        Some(path) => {
            let raw =
                std::fs::read(path).map_err(|e| CoreError::Invalid(format!("--process {}: {e}", path.display())))?;
            serde_json::from_slice(&raw)
                .map_err(|e| CoreError::Invalid(format!("--process {}: {e}", path.display())))?
        }
        None => {
            if args.args.is_empty() {
                return Err(CoreError::Invalid("exec needs a command (or --process FILE)".into()));
            }
            let config = Path::new(&record.bundle).join("config.json");
            let raw = std::fs::read(&config).map_err(|e| CoreError::Invalid(format!("{}: {e}", config.display())))?;
            let spec: Value =
                serde_json::from_slice(&raw).map_err(|e| CoreError::Invalid(format!("{}: {e}", config.display())))?;
            let mut p = spec.get("process").cloned().unwrap_or_else(|| json!({}));
            p["args"] = json!(args.args);
            p["terminal"] = json!(args.tty);
            p
        }
    };
    if !process.is_object() {
        return Err(CoreError::Invalid("the process is not a JSON object".into()));
    }
    if let Some(cwd) = &args.cwd {
        process["cwd"] = json!(cwd);
    }
    if !args.env.is_empty() {
        let mut env: Vec<String> =
            process.get("env").and_then(|e| serde_json::from_value(e.clone()).ok()).unwrap_or_default();
        for entry in &args.env {
            let key = entry.split('=').next().unwrap_or_default();
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(entry.clone());
        }
        process["env"] = json!(env);
    }
    if let Some(user) = &args.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        let parse = |s: &str| {
            s.parse::<u32>().map_err(|_| {
                CoreError::Invalid(format!("--user {user}: give numeric UID[:GID] (names are resolved in the guest image, which the host does not read)"))
            })
        };
        process["user"]["uid"] = json!(parse(uid)?);
        process["user"]["gid"] = json!(parse(gid)?);
    }
    if !args.additional_gids.is_empty() {
        process["user"]["additionalGids"] = json!(args.additional_gids);
    }
    if args.no_new_privs {
        process["noNewPrivileges"] = json!(true);
    }
    if process.get("cwd").and_then(Value::as_str).is_none_or(str::is_empty) {
        process["cwd"] = json!("/");
    }
    let raw = serde_json::to_vec(&process).map_err(CoreError::failed)?;
    kata_like_protocol::checks::oci_process(&raw).map_err(|e| CoreError::Invalid(format!("exec process: {e}")))?;
    Ok(raw)
}

/// A fresh exec ID (the guest's name for the process).
fn new_exec_id() -> String {
    let bytes = crate::vm::host_entropy(8).unwrap_or_else(|_| std::process::id().to_be_bytes().repeat(2));
    format!("exec-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// `exec`: runs a process in container `id`; in the foreground returns its
/// exit status, with `detach` 0 once it runs.
pub fn exec(opts: &Options, id: &str, args: &ExecArgs) -> Result<u32, CoreError> {
    let root = opts.root();
    let record = root.load(id)?;
    match record.status {
        TaskStatus::Created | TaskStatus::Running => {}
        TaskStatus::Paused => return Err(CoreError::WrongState(format!("cannot exec in paused container {id}"))),
        _ => return Err(CoreError::WrongState(format!("cannot exec in container {id}: it is not running"))),
    }
    if args.preserve_fds > 0 {
        return Err(CoreError::Invalid("--preserve-fds: host descriptors cannot be passed into a microVM".into()));
    }
    let process = process_json(&record, args)?;
    let terminal = serde_json::from_slice::<Value>(&process)
        .ok()
        .and_then(|p| p.get("terminal").and_then(Value::as_bool))
        .unwrap_or(false);
    if terminal && args.detach && args.console_socket.is_none() {
        return Err(CoreError::Invalid("cannot allocate a terminal without --console-socket when detached".into()));
    }
    if !terminal && args.console_socket.is_some() {
        return Err(CoreError::Invalid("--console-socket given, but the process has no terminal".into()));
    }
    let exec_id = new_exec_id();
    // The process JSON for the host process, in the container's directory.
    let execs = root.dir(id).join("execs");
    std::fs::create_dir_all(&execs).map_err(|e| CoreError::Failed(format!("{}: {e}", execs.display())))?;
    let file = execs.join(format!("{exec_id}.json"));
    std::fs::write(&file, &process).map_err(|e| CoreError::Failed(format!("{}: {e}", file.display())))?;
    if !args.detach {
        if let Some(path) = &args.pid_file {
            write_pid_file(path, std::process::id())?;
        }
        return exec_monitor(opts, id, &exec_id, None);
    }
    let spawned = spawn(opts, id, &exec_id, args.console_socket.as_deref());
    if spawned.is_err() {
        let _ = std::fs::remove_file(&file);
    }
    let pid = spawned?;
    if let Some(path) = &args.pid_file {
        write_pid_file(path, pid)?;
    }
    Ok(0)
}

/// Starts the exec's host process in the background; returns its PID once
/// the guest process runs.
fn spawn(opts: &Options, id: &str, exec_id: &str, console_socket: Option<&Path>) -> Result<u32, CoreError> {
    let mut command = opts.self_command()?;
    command.arg("_exec").arg(id).arg(exec_id);
    let (mut child, line) = spawn_reporting(command, console_socket)?;
    if line == "ok" {
        return Ok(child.id());
    }
    let status = child.wait().map_err(|e| CoreError::Failed(format!("waiting for the exec process: {e}")))?;
    match line.split_once(' ') {
        Some(("error", e)) => Err(CoreError::Failed(e.to_string())),
        _ => Err(CoreError::Failed(format!("the exec process exited ({status}) before it ran"))),
    }
}

/// The exec's host process: runs process `exec_id` (its JSON in the
/// container's `execs/`) with this process's stdio and returns its exit
/// status. Must be called before any thread starts (it blocks signals).
pub fn exec_monitor(opts: &Options, id: &str, exec_id: &str, mut notify: Notify) -> Result<u32, CoreError> {
    let result = (|| {
        let set = signals::block().map_err(CoreError::Failed)?;
        let root = opts.root();
        let record = root.load(id)?;
        let file = root.dir(id).join("execs").join(format!("{exec_id}.json"));
        let process = std::fs::read(&file).map_err(|e| CoreError::Failed(format!("{}: {e}", file.display())))?;
        let _ = std::fs::remove_file(&file);
        let terminal = serde_json::from_slice::<Value>(&process)
            .ok()
            .and_then(|p| p.get("terminal").and_then(Value::as_bool))
            .unwrap_or(false);
        let link = link(opts, &record)?;
        let stdio = StdioPaths { stdin: "fd://0".into(), stdout: "fd://1".into(), stderr: "fd://2".into(), terminal };
        let (_, io) = link.exec_process(id, exec_id, process, &stdio)?;
        // `ps` lists the exec's host process while it runs.
        let marker = root.dir(id).join("execs").join(std::process::id().to_string());
        let _ = std::fs::write(&marker, exec_id);
        signals::forward(&link, opts.rpc_timeout()?, id, exec_id, set, terminal);
        let _raw = if terminal && notify.is_none() { console::raw_stdin() } else { None };
        if terminal {
            if let Some((w, h)) = signals::window_size() {
                let _ = link.client().resize_tty(id, exec_id, w, h);
            }
        }
        if let Some(mut file) = notify.take() {
            let _ = std::io::Write::write_all(&mut file, b"ok\n");
        }
        let waited = link.wait_process(id, exec_id);
        drain(io);
        let _ = std::fs::remove_file(&marker);
        waited.map(|r| r.exit_status)
    })();
    if let (Err(e), Some(mut file)) = (&result, notify) {
        let _ =
            std::io::Write::write_all(&mut file, format!("error {}\n", e.to_string().replace('\n', " ")).as_bytes());
    }
    result
}
