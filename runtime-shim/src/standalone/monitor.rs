//! The container's host process ("monitor"): the process whose PID `create`
//! writes to `--pid-file` and the state's `pid`, the counterpart of runc's
//! container init on the host.
//!
//! It owns the container's VM: it boots it (the VMM and virtiofsd are its
//! children, killed with it by PDEATHSIG), creates the container in the
//! guest with its own stdio as the container's, and waits on its control
//! socket for `start`. Every signal it can catch goes to the container's
//! init in the guest; once that exits it tears the VM down, records the
//! status and ends the same way (the exit code, or by the same signal), so
//! its parent or subreaper (Docker's runc shim, conmon) reaps the guest
//! process's status from it. It lives in the container's network namespace
//! when the spec asks for a new one, so Docker's libnetwork hook, given
//! its PID, configures that namespace, whose interface the VM then takes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::hooks::{self, Hooks};
use super::state::{process_start, Root, State};
use super::{signals, Options};
use crate::config::RuntimeConfig;
use crate::sandbox::io::{ProcessIo, StdioPaths};
use crate::sandbox::{boot_slots, ContainerSpec, CoreError, Sandbox, TaskStatus};

/// How long output may keep flowing after the container exits (a
/// background process can hold the streams open).
const OUTPUT_GRACE: Duration = Duration::from_secs(5);
/// The control socket's directory under the configuration's state root.
const CONTROL_DIR: &str = "oci";

/// What wakes the monitor.
enum Event {
    /// `kata-like start` asked, on this connection.
    Start(UnixStream),
    /// The container's init exited (its status), or the agent was lost.
    Exited(Result<u32, CoreError>),
}

/// Whether the spec asks for a new network namespace (a `network` entry
/// without a path): the monitor makes it, runc-style.
pub fn wants_new_netns(spec: &serde_json::Value) -> bool {
    spec.pointer("/linux/namespaces").and_then(serde_json::Value::as_array).into_iter().flatten().any(|n| {
        n.get("type").and_then(serde_json::Value::as_str) == Some("network")
            && n.get("path").and_then(serde_json::Value::as_str).is_none_or(str::is_empty)
    })
}

/// Tells whoever started the monitor how creation went (a detached
/// monitor's parent reads one line: "ok" or "error MESSAGE").
pub type Notify = Option<std::fs::File>;

fn tell(notify: &mut Notify, line: &str) {
    if let Some(file) = notify.as_mut() {
        let _ = writeln!(file, "{}", line.replace('\n', " "));
    }
    *notify = None;
}

/// Runs container `id` (its record made by `create` or `run`): boots the
/// VM, creates the container, starts it at once with `start_now` or when
/// `kata-like start` asks, and returns the container's exit status once it
/// is stopped and its VM is gone. Must be called before any thread starts
/// (it blocks signals and may enter a new network namespace).
pub fn monitor(opts: &Options, id: &str, start_now: bool, mut notify: Notify) -> Result<u32, CoreError> {
    let root = opts.root();
    let mut record = root.load(id)?;
    let result = monitor_inner(opts, &root, &mut record, start_now, &mut notify);
    if let Err(e) = &result {
        tell(&mut notify, &format!("error {e}"));
    }
    result
}

fn monitor_inner(
    opts: &Options,
    root: &Root,
    record: &mut State,
    start_now: bool,
    notify: &mut Notify,
) -> Result<u32, CoreError> {
    let id = record.id.clone();
    let bundle = PathBuf::from(&record.bundle);
    let mut spec = ContainerSpec::read(&bundle)?;
    let hooks = Hooks::read(&bundle).map_err(CoreError::Invalid)?;
    let set = signals::block().map_err(CoreError::Failed)?;
    let new_netns = wants_new_netns(&spec.spec);
    // The VM is the container's network namespace: its NIC carries the
    // host namespace's interface, so the container stays in the guest's.
    if let Some(list) = spec.spec.pointer_mut("/linux/namespaces").and_then(serde_json::Value::as_array_mut) {
        list.retain(|n| n.get("type").and_then(serde_json::Value::as_str) != Some("network"));
    }
    let netns = if new_netns {
        // Single-threaded here, so the whole process moves.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| CoreError::Failed(format!("a network namespace for the container: {e}")))?;
        Some(PathBuf::from(format!("/proc/{}/ns/net", std::process::id())))
    } else {
        spec.netns.clone()
    };
    let pid = std::process::id();
    // (Loaded before a monitor was named, the record reads as stopped.)
    record.status = TaskStatus::Creating;
    record.pid = pid;
    record.monitor_pid = pid;
    record.monitor_start = process_start(pid).map_or(0, |(_, start)| start);
    root.save(record)?;

    let config = RuntimeConfig::load(opts.config.as_deref()).map_err(|e| CoreError::Invalid(e.to_string()))?;
    let mut boot = spec.boot_options_sized(config.vcpus, config.memory_mib);
    boot.boot_slots = Some(config.state_root.join(boot_slots::DIR));
    boot.cgroups_path = record.cgroups_path.clone();
    // Docker's prestart hook (libnetwork-setkey) configures the namespace
    // of `pid`: before the VM takes its interface.
    hooks::run("prestart", &hooks.prestart, record).map_err(CoreError::Failed)?;
    hooks::run("createRuntime", &hooks.create_runtime, record).map_err(CoreError::Failed)?;
    boot.netns = match netns {
        Some(path) if crate::network::has_interface(&path).map_err(|e| CoreError::Failed(e.to_string()))? => Some(path),
        _ => None,
    };
    let name = root.vm_name(&id);
    let control = config.state_root.join(CONTROL_DIR).join(format!("{name}.sock"));
    // The VM's directory goes in the record before it exists, so a
    // `delete` after a monitor killed mid-boot finds what to clean.
    record.vm_dir = config.state_root.join(&name);
    record.control = control.clone();
    root.save(record)?;
    let sandbox = Sandbox::start(&config, &name, boot, None)?;
    let outcome = run_container(&config, root, record, &sandbox, &spec, &hooks, set, start_now, notify);
    sandbox.destroy();
    let _ = std::fs::remove_file(&control);
    let status = outcome?;
    record.status = TaskStatus::Stopped;
    record.exit_status = Some(status);
    record.pid = 0;
    root.save(record)?;
    Ok(status)
}

/// From the booted VM to the container's exit.
#[allow(clippy::too_many_arguments)]
fn run_container(
    config: &RuntimeConfig,
    root: &Root,
    record: &mut State,
    sandbox: &Sandbox,
    spec: &ContainerSpec,
    hooks: &Hooks,
    set: nix::sys::signal::SigSet,
    start_now: bool,
    notify: &mut Notify,
) -> Result<u32, CoreError> {
    let id = record.id.clone();
    let bundle = PathBuf::from(&record.bundle);
    let stdio = StdioPaths {
        stdin: "fd://0".into(),
        stdout: "fd://1".into(),
        stderr: "fd://2".into(),
        terminal: spec.terminal,
    };
    let (guest_pid, io) = sandbox.add_container(&id, spec, &spec.rootfs_in(&bundle), &stdio)?;
    record.guest_pid = guest_pid;
    hooks::run("createContainer", &hooks.create_container, record).map_err(CoreError::Failed)?;
    let (events, rx) = mpsc::channel();
    let waiter = events.clone();
    let link = sandbox.long_poll_client()?;
    let wait_id = id.clone();
    std::thread::Builder::new()
        .name("wait".into())
        .spawn(move || {
            let exited = link.wait_process(&wait_id, "").map(|r| r.exit_status).map_err(CoreError::Agent);
            let _ = waiter.send(Event::Exited(exited));
        })
        .map_err(CoreError::failed)?;
    signals::forward(sandbox.link(), config.rpc_timeout(), &id, "", set, spec.terminal);
    // A terminal on a caller's terminal (foreground `run`): raw mode, and
    // the guest's terminal gets its size.
    let _raw = if spec.terminal && start_now && notify.is_none() {
        let raw = super::console::raw_stdin();
        if let Some((w, h)) = signals::window_size() {
            let _ = sandbox.client().resize_tty(&id, "", w, h);
        }
        raw
    } else {
        None
    };
    if start_now {
        start(sandbox, root, record, hooks)?;
    } else {
        serve_control(&record.control, events)?;
        record.status = TaskStatus::Created;
        root.save(record)?;
    }
    tell(notify, "ok");
    let status = loop {
        match rx.recv() {
            Ok(Event::Start(mut stream)) => {
                let reply = if record.status == TaskStatus::Created {
                    start(sandbox, root, record, hooks).map(|()| "ok".to_string())
                } else {
                    Err(CoreError::WrongState(format!("container {id} is {:?}, not created", record.status)))
                };
                let line = match reply {
                    Ok(ok) => ok,
                    Err(e) => format!("error {e}").replace('\n', " "),
                };
                let _ = writeln!(stream, "{line}");
            }
            Ok(Event::Exited(Ok(status))) => break status,
            Ok(Event::Exited(Err(e))) => {
                let why = sandbox.exited().unwrap_or_else(|| e.to_string());
                return Err(CoreError::Failed(format!(
                    "lost the container: {why}; guest console:\n{}",
                    sandbox.console_tail()
                )));
            }
            Err(_) => return Err(CoreError::Failed("the wait for the container ended".into())),
        }
    };
    drain(io);
    Ok(status)
}

/// Starts the created container: startContainer hooks, the user process,
/// poststart hooks (whose failure is logged, as the spec says).
fn start(sandbox: &Sandbox, root: &Root, record: &mut State, hooks: &Hooks) -> Result<(), CoreError> {
    hooks::run("startContainer", &hooks.start_container, record).map_err(CoreError::Failed)?;
    sandbox.start_container(&record.id)?;
    record.status = TaskStatus::Running;
    root.save(record)?;
    hooks::run_logged("poststart", &hooks.poststart, record);
    Ok(())
}

/// Listens on the control socket: each connection sends one line, "start".
fn serve_control(path: &Path, events: mpsc::Sender<Event>) -> Result<(), CoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| CoreError::Failed(format!("{}: {e}", dir.display())))?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| CoreError::Failed(format!("{}: {e}", path.display())))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut line = String::new();
                let Ok(reader) = stream.try_clone() else { continue };
                if BufReader::new(reader).read_line(&mut line).is_err() {
                    continue;
                }
                if line.trim() == "start" {
                    if events.send(Event::Start(stream)).is_err() {
                        return;
                    }
                } else {
                    let _ = writeln!(&stream, "error unknown request {:?}", line.trim());
                }
            }
        })
        .map_err(CoreError::failed)?;
    Ok(())
}

/// Asks container `record`'s monitor to start it.
pub fn request_start(record: &State) -> Result<(), CoreError> {
    let mut stream = UnixStream::connect(&record.control).map_err(|e| {
        CoreError::Failed(format!("cannot reach the monitor of {} at {}: {e}", record.id, record.control.display()))
    })?;
    writeln!(stream, "start").map_err(CoreError::failed)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(CoreError::failed)?;
    match line.trim_end().split_once(' ') {
        _ if line.trim_end() == "ok" => Ok(()),
        Some(("error", e)) => Err(CoreError::Failed(e.to_string())),
        _ => Err(CoreError::Failed(format!("the monitor of {} ended before the container started", record.id))),
    }
}

/// Waits for the output streams to drain (bounded).
pub fn drain(mut io: ProcessIo) {
    match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(rt) => rt.block_on(io.wait_output(OUTPUT_GRACE)),
        Err(e) => tracing::warn!(error = %e, "cannot wait for the output to drain"),
    }
    io.close_stdin();
}
