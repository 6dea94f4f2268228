//! OCI lifecycle hooks (runtime-spec config.md "POSIX-platform Hooks"),
//! all run on the host with the container's state on stdin. Where the spec
//! says a hook runs "in the container namespace" (createContainer,
//! startContainer) there is no host namespace of the container to run it
//! in: the container lives in the guest, where the hook's binary (a host
//! path) does not exist. Those run on the host at the same point of the
//! lifecycle; docs/docker-podman.md says so.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::State;

/// One hook.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Hook {
    /// Absolute path of the executable.
    pub path: String,
    /// Its argv, argv[0] included.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its whole environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds it may run.
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// The spec's hooks, by point of the lifecycle.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// Deprecated in the spec, still Docker's way to join its network.
    #[serde(default)]
    pub prestart: Vec<Hook>,
    /// After the runtime environment exists, before pivot_root.
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    /// Before pivot_root, in the container's namespaces (host here).
    #[serde(default)]
    pub create_container: Vec<Hook>,
    /// Before the user process runs (host here).
    #[serde(default)]
    pub start_container: Vec<Hook>,
    /// After the user process started.
    #[serde(default)]
    pub poststart: Vec<Hook>,
    /// After the container is deleted.
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

impl Hooks {
    /// The hooks of `bundle/config.json` (none if it has none).
    pub fn read(bundle: &Path) -> Result<Hooks, String> {
        let path = bundle.join("config.json");
        let raw = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
        match spec.get("hooks") {
            None | Some(serde_json::Value::Null) => Ok(Hooks::default()),
            Some(hooks) => serde_json::from_value(hooks.clone()).map_err(|e| format!("config.json hooks: {e}")),
        }
    }
}

/// How long a hook without a timeout may run before it is killed (the spec
/// leaves it open; a hung hook must not hang `create` for ever).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `hooks` (of lifecycle point `what`) in order with `state` on
/// stdin; the first that fails or times out is the error, naming it.
pub fn run(what: &str, hooks: &[Hook], state: &State) -> Result<(), String> {
    let state_json = serde_json::to_vec(&oci_state(state)).map_err(|e| e.to_string())?;
    for (i, hook) in hooks.iter().enumerate() {
        run_one(hook, &state_json).map_err(|e| format!("{what} hook #{i} ({}): {e}", hook.path))?;
    }
    Ok(())
}

/// Runs `hooks` and logs failures: for poststart and poststop, whose
/// failures the spec says must not change the outcome.
pub fn run_logged(what: &str, hooks: &[Hook], state: &State) {
    if let Err(e) = run(what, hooks, state) {
        tracing::warn!("{e}");
    }
}

/// The runtime-spec state document: only its fields (the hook gets what
/// runc would give it).
fn oci_state(state: &State) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": state.oci_version,
        "id": state.id,
        "status": state.status,
        "pid": state.pid,
        "bundle": state.bundle,
        "annotations": state.annotations,
    })
}

fn run_one(hook: &Hook, state_json: &[u8]) -> Result<(), String> {
    if !Path::new(&hook.path).is_absolute() {
        return Err("the path is not absolute".into());
    }
    let mut command = Command::new(&hook.path);
    if let Some((arg0, rest)) = hook.args.split_first() {
        std::os::unix::process::CommandExt::arg0(&mut command, arg0);
        command.args(rest);
    }
    command.env_clear();
    for entry in &hook.env {
        if let Some((k, v)) = entry.split_once('=') {
            command.env(k, v);
        }
    }
    // Its output goes to a file, so a talkative hook never blocks on a
    // full pipe while we wait for it; it is read for the error message.
    let mut output = tempfile::tempfile().map_err(|e| format!("a file for its output: {e}"))?;
    let copy = output.try_clone().map_err(|e| format!("a file for its output: {e}"))?;
    let copy2 = copy.try_clone().map_err(|e| format!("a file for its output: {e}"))?;
    command.stdin(Stdio::piped()).stdout(Stdio::from(copy)).stderr(Stdio::from(copy2));
    let mut child = command.spawn().map_err(|e| format!("cannot run it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(state_json);
    }
    let timeout = hook.timeout.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    if timeout.is_zero() {
        let _ = child.kill();
        let _ = child.wait();
        return Err("its timeout is 0".into());
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => {
                use std::io::{Read, Seek};
                let mut said = String::new();
                let _ = output.rewind().and_then(|()| Read::by_ref(&mut output).take(4096).read_to_string(&mut said));
                return Err(format!("{status}: {}", said.trim()));
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for it: {e}")),
        }
    }
}
