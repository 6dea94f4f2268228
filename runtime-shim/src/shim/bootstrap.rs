//! How containerd starts the shim and learns what it is: `shim start` in
//! every form containerd speaks, and `shim -info`.
//!
//! * containerd 1.6 – 2.2 (legacy): flags `-namespace -id -address
//!   [-publish-binary] [-debug] start`, `TTRPC_ADDRESS` in the environment,
//!   the runtime options (a `google.protobuf.Any`) or nothing on stdin; the
//!   reply on stdout is the socket address.
//! * containerd ≥ 2.3: the same flags, and a `BootstrapParams` message on
//!   stdin (instance id, namespace, addresses, log level, a socket
//!   directory, extensions carrying the runtime options); the reply is a
//!   `BootstrapResult` (version 2: we serve the task API v2, which every
//!   containerd from 1.6 on speaks).
//! * containerd ≥ 2.2 runs `shim -info` (runtime options on stdin) and
//!   reads a `RuntimeInfo` from stdout.
//!
//! Written here rather than left to `containerd-shim` 0.10: it reads stdin
//! as runc options *after* spawning the server, so the 2.3 handshake failed
//! and left an orphaned server on the socket, and it has no `-info`.
//! containerd-shim 0.12 has both but serves only the task API v3, which
//! containerd 1.6 and 1.7 do not speak (docs/design.md). Everything is
//! decided from stdin before a process is spawned, and a server that does
//! not come up is killed and its socket removed.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::shim::oci::Options;
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use containerd_shim::Flags;
use sha2::{Digest, Sha256};

/// containerd's bootstrap protocol messages (protos/bootstrap.proto).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::unwrap_used,
    unused_attributes,
    unused_mut,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code
)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/bootstrap.rs"));
}

use proto::{BootstrapParams, BootstrapResult, LogLevel};

/// Where containerd's shim sockets live unless it names a directory.
pub const SOCKET_DIR: &str = "/run/containerd/s";
/// The task API version we serve (`containerd.task.v2`).
pub const TASK_API_VERSION: i32 = 2;
/// Type URL of the OCI runtime features document in `RuntimeInfo`.
pub const FEATURES_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/features/Features";
/// Largest stdin `start` or `-info` accepts (containerd sends a few KiB).
const MAX_STDIN: u64 = 4 << 20;
/// How long a server that closed its stdout gets to answer on its socket.
const SERVE_GRACE: Duration = Duration::from_secs(5);
/// How long the server gets to start listening (to close its stdout); it
/// takes milliseconds once containerd has opened the shim's log.
const LISTEN_GRACE: Duration = Duration::from_secs(10);

/// What is wrong with a start or info request, or with starting the server.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// stdin could not be read or was too large.
    #[error("reading stdin: {0}")]
    Stdin(String),
    /// stdin held something that is neither protocol's message.
    #[error("stdin of `start` is neither containerd's BootstrapParams nor runtime options ({0})")]
    Unrecognised(String),
    /// BootstrapParams for another shim instance.
    #[error(
        "BootstrapParams are for instance {params_id:?} in namespace {params_ns:?}, \
         but the flags say -id {id:?} -namespace {ns:?}"
    )]
    Mismatch {
        /// instance_id of the params.
        params_id: String,
        /// namespace of the params.
        params_ns: String,
        /// -id flag.
        id: String,
        /// -namespace flag.
        ns: String,
    },
    /// A required value is missing.
    #[error("{0}")]
    Missing(&'static str),
    /// The server process could not be started or did not come up.
    #[error("shim server: {0}")]
    Server(String),
    /// The reply could not be encoded or written.
    #[error("writing the reply: {0}")]
    Reply(String),
}

/// Which protocol containerd spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Flags, environment and options on stdin; the address as the reply.
    Legacy,
    /// BootstrapParams in, BootstrapResult out (containerd ≥ 2.3).
    Bootstrap,
}

/// Everything `start` needs, from the flags, environment and stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct StartRequest {
    /// The protocol to answer in.
    pub protocol: Protocol,
    /// Container (or sandbox) id.
    pub id: String,
    /// containerd namespace.
    pub namespace: String,
    /// containerd's gRPC address (`-address`).
    pub grpc_address: String,
    /// containerd's ttrpc address (events are published there).
    pub ttrpc_address: String,
    /// The directory containerd wants the socket in, if it names one.
    pub socket_dir: Option<String>,
    /// Debug logging.
    pub debug: bool,
    /// The runc-style runtime options (their `shim_cgroup`).
    pub options: Option<Options>,
}

impl StartRequest {
    /// Decides the protocol and collects the values, from the parsed
    /// `flags`, the `TTRPC_ADDRESS` environment value and stdin.
    pub fn parse(flags: &Flags, ttrpc_env: Option<String>, stdin: &[u8]) -> Result<StartRequest, BootstrapError> {
        if let Some(params) = bootstrap_params(stdin) {
            if params.instance_id != flags.id || params.namespace != flags.namespace {
                return Err(BootstrapError::Mismatch {
                    params_id: params.instance_id,
                    params_ns: params.namespace,
                    id: flags.id.clone(),
                    ns: flags.namespace.clone(),
                });
            }
            if params.containerd_ttrpc_address.is_empty() {
                return Err(BootstrapError::Missing("BootstrapParams name no containerd_ttrpc_address"));
            }
            let grpc_address = if params.containerd_grpc_address.is_empty() {
                flags.address.clone()
            } else {
                params.containerd_grpc_address.clone()
            };
            let options = params.extensions.iter().filter_map(|e| e.value.as_ref()).find_map(runtime_options);
            let debug = flags.debug || params.log_level.value() < LogLevel::LOG_LEVEL_INFO as i32;
            return Ok(StartRequest {
                protocol: Protocol::Bootstrap,
                id: params.instance_id,
                namespace: params.namespace,
                grpc_address,
                ttrpc_address: params.containerd_ttrpc_address,
                socket_dir: params.socket_dir.filter(|d| !d.is_empty()),
                debug,
                options,
            });
        }
        let options = if stdin.is_empty() {
            None
        } else {
            let any = Any::parse_from_bytes(stdin).map_err(|e| BootstrapError::Unrecognised(e.to_string()))?;
            if any.type_url.is_empty() {
                return Err(BootstrapError::Unrecognised("an Any without a type URL".into()));
            }
            // Options of another runtime type are not ours to read.
            runtime_options(&any)
        };
        let ttrpc_address = ttrpc_env
            .filter(|a| !a.is_empty())
            .ok_or(BootstrapError::Missing("TTRPC_ADDRESS is not set (containerd sets it for `start`)"))?;
        if flags.id.is_empty() || flags.namespace.is_empty() {
            return Err(BootstrapError::Missing("`start` needs -id and -namespace"));
        }
        Ok(StartRequest {
            protocol: Protocol::Legacy,
            id: flags.id.clone(),
            namespace: flags.namespace.clone(),
            grpc_address: flags.address.clone(),
            ttrpc_address,
            socket_dir: None,
            debug: flags.debug,
            options,
        })
    }

    /// The socket address of the shim serving `grouping` (the pod): the
    /// name containerd derives too (sha256 of address/namespace/grouping).
    pub fn socket_address(&self, grouping: &str) -> String {
        let key = PathBuf::from(&self.grpc_address).join(&self.namespace).join(grouping);
        let hash = Sha256::digest(key.to_string_lossy().as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let dir = self.socket_dir.as_deref().unwrap_or(SOCKET_DIR).trim_end_matches('/');
        format!("unix://{dir}/{hex}")
    }

    /// The reply to containerd for a server at `address`.
    pub fn reply(&self, address: &str) -> Result<Vec<u8>, BootstrapError> {
        match self.protocol {
            Protocol::Legacy => Ok(address.as_bytes().to_vec()),
            Protocol::Bootstrap => {
                let mut result = BootstrapResult::new();
                result.version = TASK_API_VERSION;
                result.address = address.to_string();
                result.protocol = "ttrpc".into();
                result.write_to_bytes().map_err(|e| BootstrapError::Reply(e.to_string()))
            }
        }
    }
}

/// stdin as BootstrapParams, if it is that: it must parse and carry a
/// field only BootstrapParams have (a runtime-options `Any` parses too, as
/// instance_id = type URL and namespace = value).
fn bootstrap_params(stdin: &[u8]) -> Option<BootstrapParams> {
    let params = BootstrapParams::parse_from_bytes(stdin).ok()?;
    let bootstrap_only = !params.containerd_ttrpc_address.is_empty()
        || !params.containerd_grpc_address.is_empty()
        || !params.containerd_version.is_empty()
        || !params.containerd_binary.is_empty()
        || !params.extensions.is_empty()
        || params.socket_dir.is_some()
        || params.log_level.value() != 0;
    bootstrap_only.then_some(params)
}

/// runc-style runtime options (containerd's default `Options`) in `any`.
fn runtime_options(any: &Any) -> Option<Options> {
    any.type_url.ends_with("Options").then(|| Options::parse_from_bytes(&any.value).ok()).flatten()
}

/// The `-info` reply: our name and version, and the OCI features document
/// of what the guest agent implements.
pub fn runtime_info(runtime_id: &str) -> RuntimeInfo {
    let mut info = RuntimeInfo::new();
    info.name = runtime_id.to_string();
    let mut version = RuntimeVersion::new();
    version.version = env!("CARGO_PKG_VERSION").to_string();
    version.revision = option_env!("KATA_LIKE_GIT_REVISION").unwrap_or_default().to_string();
    info.version = MessageField::some(version);
    let mut features = Any::new();
    features.type_url = FEATURES_TYPE_URL.into();
    features.value =
        serde_json::to_vec(&crate::features::features(crate::features::Frontend::Shim)).unwrap_or_default();
    info.features = MessageField::some(features);
    info
}

/// Handles `-info` and `start`; None for the actions the containerd-shim
/// crate serves (the server itself, `delete`). Returns the exit code.
pub fn dispatch(runtime_id: &str) -> Option<i32> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let flags = containerd_shim::parse(args.get(1..).unwrap_or_default()).ok()?;
    let outcome = if flags.info {
        read_stdin().and_then(|_options| {
            runtime_info(runtime_id).write_to_bytes().map_err(|e| BootstrapError::Reply(e.to_string()))
        })
    } else if flags.action == "start" {
        start(&flags)
    } else {
        return None;
    };
    let written = outcome.and_then(|reply| {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&reply).and_then(|()| stdout.flush()).map_err(|e| BootstrapError::Reply(e.to_string()))
    });
    match written {
        Ok(()) => Some(0),
        Err(e) => {
            eprintln!("{runtime_id}: {e}");
            Some(1)
        }
    }
}

fn read_stdin() -> Result<Vec<u8>, BootstrapError> {
    let mut input = Vec::new();
    std::io::stdin().take(MAX_STDIN + 1).read_to_end(&mut input).map_err(|e| BootstrapError::Stdin(e.to_string()))?;
    if input.len() as u64 > MAX_STDIN {
        return Err(BootstrapError::Stdin(format!("more than {MAX_STDIN} bytes")));
    }
    Ok(input)
}

/// `shim start`: decides everything from stdin, then starts the server
/// (or finds the pod's running one) and returns the reply.
fn start(flags: &Flags) -> Result<Vec<u8>, BootstrapError> {
    let stdin = read_stdin()?;
    let request = StartRequest::parse(flags, std::env::var("TTRPC_ADDRESS").ok(), &stdin)?;
    let grouping = super::grouping(&request.id);
    let address = request.socket_address(&grouping);
    serve(&request, &address)?;
    // containerd (1.x, and 2.x without its bootstrap.json) finds a running
    // shim again after a restart through the bundle's `address` file, as
    // Go shims write it; without it a restarted containerd gives up on
    // every shim. The bundle is our working directory.
    std::fs::write(ADDRESS_FILE, &address)
        .map_err(|e| BootstrapError::Server(format!("writing the bundle's {ADDRESS_FILE} file: {e}")))?;
    request.reply(&address)
}

/// Environment variable carrying `pid:starttime` of containerd.
pub const CONTAINERD_ENV: &str = "KATA_LIKE_CONTAINERD";

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces): `[0]` is the state (field 3), `[1]` the parent pid, `[19]` the
/// start time (field 22).
pub(super) fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_string).collect())
}

/// The pids of every process on the host.
pub(super) fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// `pid:starttime` of process `pid` (start time in clock ticks since boot,
/// so a reused pid is not mistaken for it), if it exists.
pub fn identity(pid: u32) -> Option<String> {
    let starttime = stat_fields(pid)?.into_iter().nth(19)?;
    Some(format!("{pid}:{starttime}"))
}

/// The bundle file naming the shim's socket address.
pub const ADDRESS_FILE: &str = "address";

/// The pid of the live shim server that was started for container `id`
/// and serves the address the bundle `bundle` names: a process of this
/// program whose command line is `... -id ID ... -socket ADDRESS`. Found
/// through /proc, not over its socket, so a server that no longer answers
/// (stopped, deadlocked) is found too. Servers started for another
/// container (a pod's sandbox, when `id` is a later container of it) are
/// not returned: ending them would end the whole pod.
pub fn live_server(bundle: &Path, id: &str) -> Option<u32> {
    let address = std::fs::read_to_string(bundle.join(ADDRESS_FILE)).ok()?;
    let address = address.trim().to_string();
    let exe = std::env::current_exe().ok()?;
    let me = std::process::id();
    all_pids().into_iter().find(|&pid| {
        if pid == me || std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() != Some(&exe) {
            return false;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let value = |flag: &str| args.windows(2).find(|w| w[0] == flag.as_bytes()).map(|w| w[1]);
        value("-socket") == Some(address.as_bytes()) && value("-id") == Some(id.as_bytes())
    })
}

fn socket_path(address: &str) -> &Path {
    Path::new(address.strip_prefix("unix://").unwrap_or(address))
}

fn answers(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

/// Spawns this binary as the server for `address` and waits until it
/// serves (it closes its stdout once listening) or has found the pod's
/// server already there. On failure the child is killed and a socket
/// nobody serves is removed.
fn serve(request: &StartRequest, address: &str) -> Result<(), BootstrapError> {
    let exe = std::env::current_exe().map_err(|e| BootstrapError::Server(format!("own executable: {e}")))?;
    if let Some(dir) = socket_path(address).parent() {
        std::fs::create_dir_all(dir).map_err(|e| BootstrapError::Server(format!("{}: {e}", dir.display())))?;
    }
    let mut command = Command::new(exe);
    command
        .args(["-namespace", &request.namespace, "-id", &request.id, "-address", &request.grpc_address])
        .args(["-socket", address])
        .env("TTRPC_ADDRESS", &request.ttrpc_address)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if request.debug {
        command.arg("-debug");
    }
    // Who started us: containerd (see `abandon`).
    if let Some(ident) = identity(std::os::unix::process::parent_id()) {
        command.env(CONTAINERD_ENV, ident);
    }
    let mut child = command.spawn().map_err(|e| BootstrapError::Server(format!("spawn: {e}")))?;
    let result = confine(request, &child).and_then(|()| wait_serving(&mut child, address));
    if let Err(e) = &result {
        let _ = child.kill();
        let _ = child.wait();
        if !answers(address) {
            let _ = std::fs::remove_file(socket_path(address));
        }
        tracing::warn!(error = %e, "shim server did not start; killed it and removed its socket");
    }
    result
}

/// The runtime options' shim cgroup, and an OOM score just above
/// containerd's (so the OOM killer takes the shim before containerd).
fn confine(request: &StartRequest, child: &Child) -> Result<(), BootstrapError> {
    if let Some(cgroup) = request.options.as_ref().map(|o| o.shim_cgroup.as_str()).filter(|c| !c.is_empty()) {
        containerd_shim::cgroup::add_task_to_cgroup(cgroup, child.id())
            .map_err(|e| BootstrapError::Server(format!("moving the shim into cgroup {cgroup}: {e}")))?;
    }
    if let Err(e) = containerd_shim::cgroup::adjust_oom_score(child.id()) {
        // Not fatal: hosts that are containers themselves may refuse it.
        tracing::warn!(error = %e, "cannot set the shim's oom_score_adj");
    }
    Ok(())
}

fn wait_serving(child: &mut Child, address: &str) -> Result<(), BootstrapError> {
    // The server's stdout closes once it listens (or found the pod's
    // server); its log lines until then go to our stderr, as containerd
    // expects of a shim.
    // Bounded: before it listens the server opens the bundle's `log` FIFO
    // (the containerd-shim crate's logger, a blocking open) and waits there
    // until containerd opens the other end, which a containerd killed
    // during `start` never does: both processes waited forever (found by
    // the fault loop killing containerd 25-35 ms into a `ctr run`).
    if let Some(mut out) = child.stdout.take() {
        let (echoed, echo) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = out.read_to_end(&mut bytes);
            let _ = echoed.send(bytes);
        });
        let bytes = echo.recv_timeout(LISTEN_GRACE).map_err(|_| {
            BootstrapError::Server(format!(
                "not listening after {} s (containerd never opened the shim's log: is it gone?)",
                LISTEN_GRACE.as_secs()
            ))
        })?;
        let _ = std::io::stderr().write_all(&bytes);
    }
    let deadline = Instant::now() + SERVE_GRACE;
    loop {
        if answers(address) {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                return Err(BootstrapError::Server(format!("exited ({status}) without serving {address}")));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => return Err(BootstrapError::Server(format!("does not answer on {address}"))),
            Err(e) => return Err(BootstrapError::Server(format!("wait: {e}"))),
        }
    }
}

#[cfg(test)]
#[path = "bootstrap_tests.rs"]
mod tests;
