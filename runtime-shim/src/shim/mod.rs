//! `containerd-shim-kata-like-v2`: the containerd shim v2 on the
//! `containerd-shim` crate (async). One shim and one microVM per sandbox.
//!
//! * [`bootstrap`]: `start` in every protocol containerd speaks, `-info`.
//! * [`abandon`]: a first create whose containerd died ends the sandbox.
//! * [`service`]: the Task service (containerd → shim → agent).
//! * [`bundle`]: containerd's rootfs mounts on the bundle.
//! * [`options`]: containerd's runtime options (`ConfigPath`).
//! * [`metrics`]: container stats as containerd's cgroup metrics.
//! * [`rpc`]: ttrpc errors (the core's errors mapped once), timestamps.
//!
//! The sandbox VM of this shim (created with the first container and
//! stopped with the last), its containers and their stdio are the sandbox
//! core's (`crate::sandbox`); this module only speaks containerd.

pub mod abandon;
pub mod bootstrap;
pub mod bundle;
pub mod metrics;
pub mod options;
pub mod rpc;
pub mod service;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, Error, Flags, StartOpts};

/// One malloc arena for the whole shim, set before its threads start.
///
/// glibc gives each thread that allocates an arena of its own (up to eight
/// per core); a shim's threads (runtime workers, RPCs waiting on the guest,
/// stdio relays) allocate little and seldom, so the extra arenas were a few
/// hundred KiB of mostly empty dirty pages per pod (docs/benchmarks.md,
/// "Shim memory"). No crate exposes mallopt beyond `libc`.
pub fn one_malloc_arena() {
    // SAFETY: mallopt only changes allocator tuning; called before any other
    // thread exists, so no allocation races with the change. Its result is
    // not checked: this runs before logging is set up, and a libc that
    // refuses keeps its default arenas, which only costs memory.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// The annotation grouping containers of one pod into one shim.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// The shim process.
#[derive(Clone)]
pub struct KataShim {
    namespace: String,
    id: String,
    /// The socket this server listens on (`-socket`), removed at exit.
    socket: String,
    exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for KataShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KataShim").field("namespace", &self.namespace).field("id", &self.id).finish()
    }
}

impl std::fmt::Debug for service::Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service").finish_non_exhaustive()
    }
}

/// Reads the sandbox id annotation of the bundle in the working directory.
fn grouping(id: &str) -> String {
    std::fs::read("config.json")
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.pointer(&format!("/annotations/{}", SANDBOX_ID_ANNOTATION.replace('/', "~1"))).cloned())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| id.to_string())
}

#[async_trait]
impl Shim for KataShim {
    type T = service::Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        KataShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let group = grouping(&opts.id);
        spawn(opts, &group, Vec::new()).await
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // containerd calls this when the shim is gone, or when it gave up on
        // one it cannot reach any more (after a restart). A server still
        // answering at the bundle's address is ended first: its VMM and
        // virtiofsd die with it (PDEATHSIG). Then remove the mounts and
        // state it left.
        let bundle = std::env::current_dir().unwrap_or_default();
        if let Some(pid) = bootstrap::live_server(&bundle, &self.id) {
            end_server(pid).await;
        }
        crate::sandbox::cleanup_after_crash(&self.id, &bundle);
        let mut resp = DeleteResponse::new();
        resp.exit_status = 128 + libc::SIGKILL as u32;
        resp.exited_at = protobuf::MessageField::some(containerd_shim::util::timestamp().unwrap_or_default());
        Ok(resp)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
        // The crate removes the socket only when the bundle still holds an
        // `address` file, which containerd has usually deleted by now.
        // Unlinking it while the listener is open only stops new clients.
        if let Some(path) = self.socket.strip_prefix("unix://").filter(|p| !p.is_empty()) {
            match std::fs::remove_file(path) {
                Ok(()) => log::info!("removed the shim socket {path}"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("cannot remove the shim socket {path}: {e}"),
            }
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        collect_reaped_exits().await;
        let service = service::Service::new(self.namespace.clone(), publisher, self.exit.clone());
        end_on_sigterm(service.clone());
        service
    }
}

/// SIGTERM (containerd or an operator giving up on the shim) ends the
/// sandbox and the shim; the containerd-shim crate only logs it.
fn end_on_sigterm(service: service::Service) {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut sigterm) => {
            tokio::spawn(async move {
                if sigterm.recv().await.is_some() {
                    log::warn!("SIGTERM: stopping the sandbox VM and exiting");
                    service.terminate().await;
                }
            });
        }
        Err(e) => log::error!("cannot handle SIGTERM: {e}"),
    }
}

/// Ends the live shim server `pid` (see [`bootstrap::live_server`]): SIGTERM
/// (and SIGCONT, should it be stopped), then SIGKILL if it is still there
/// after 3 s: containerd gives the whole `delete` 5 s.
async fn end_server(pid: u32) {
    let target = nix::unistd::Pid::from_raw(pid as i32);
    log::warn!("containerd gave up on the running shim {pid}: ending it");
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGTERM);
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGCONT);
    for _ in 0..30 {
        if nix::sys::signal::kill(target, None).is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGKILL);
}

/// The shim crate's SIGCHLD handler reaps every child of the process; the
/// exits it publishes go to `crate::vm::child`, where waits on our own
/// children (VMM, virtiofsd, iptables) find them. Subscribed before the
/// task service starts, so before any child exists.
async fn collect_reaped_exits() {
    match monitor_subscribe(Topic::Pid).await {
        Ok(mut sub) => {
            tokio::spawn(async move {
                while let Some(event) = sub.rx.recv().await {
                    if let Subject::Pid(pid) = event.subject {
                        if let Ok(pid) = u32::try_from(pid) {
                            crate::vm::child::record_reaped(pid, event.exit_code);
                        }
                    }
                }
            });
        }
        Err(e) => log::error!("cannot subscribe to child exits: {e}; exit statuses may be lost"),
    }
}
