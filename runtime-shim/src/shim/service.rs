//! The shim v2 Task service: containerd's requests, turned into agent RPCs
//! on the sandbox VM, with the task events containerd expects.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::{self, Status};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::Code;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, TtrpcResult};
use kata_like_protocol::agent::UpdateContainerRequest;
use kata_like_protocol::{AgentClient, AgentClientError};

use super::rpc::{agent_err, blocking, core_err, err, exit_ts, task_err};
use super::{bundle, metrics, options};
use crate::config::RuntimeConfig;
use crate::sandbox::io::{SharedIo, StdioPaths};
use crate::sandbox::pod::Kind;
use crate::sandbox::{ContainerSpec, CoreError, Exit, Lifecycle, Sandbox, TaskStatus};

/// Exit status reported when the VM died under a process.
pub const VM_GONE_STATUS: u32 = 255;
/// How long output may keep flowing after a process exits.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
struct Proc {
    pid: u32,
    /// Its status and exit (shared by every clone).
    task: Lifecycle,
    stdio: StdioPaths,
    io: SharedIo,
    /// The OCI process JSON of an exec.
    spec: Vec<u8>,
}

impl Proc {
    fn new(stdio: StdioPaths, spec: Vec<u8>) -> Proc {
        Proc { pid: 0, task: Lifecycle::created(), stdio, io: Arc::default(), spec }
    }
}

/// containerd's name for a task status.
fn status_code(status: TaskStatus) -> Status {
    match status {
        TaskStatus::Creating => Status::UNKNOWN,
        TaskStatus::Created => Status::CREATED,
        TaskStatus::Running => Status::RUNNING,
        TaskStatus::Paused => Status::PAUSED,
        TaskStatus::Stopped => Status::STOPPED,
    }
}

#[derive(Debug)]
struct Container {
    bundle: PathBuf,
    mounted_bundle: bool,
    /// CRI's sandbox container, which is the VM itself (see [`pod`]).
    virtual_sandbox: bool,
    init: Proc,
    execs: HashMap<String, Proc>,
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    sandbox: tokio::sync::Mutex<Option<Arc<Sandbox>>>,
    containers: Mutex<HashMap<String, Container>>,
}

/// The Task service of one shim.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl Service {
    /// A service publishing to containerd through `publisher`.
    pub fn new(namespace: String, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            inner: Arc::new(Inner {
                namespace,
                publisher,
                exit,
                sandbox: tokio::sync::Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.inner.containers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn publish(&self, topic: &str, event: Box<dyn protobuf::MessageDyn>) {
        if let Err(e) = self.inner.publisher.publish(Context::default(), topic, &self.inner.namespace, event).await {
            log::warn!("publish {topic}: {e}");
        }
    }

    async fn sandbox(&self) -> TtrpcResult<Arc<Sandbox>> {
        self.inner
            .sandbox
            .lock()
            .await
            .clone()
            .ok_or_else(|| err(Code::FAILED_PRECONDITION, "the sandbox VM is not running"))
    }

    fn proc(&self, id: &str, exec_id: &str) -> TtrpcResult<Proc> {
        let containers = self.containers();
        let c = containers.get(id).ok_or_else(|| err(Code::NOT_FOUND, format!("container {id} not found")))?;
        if exec_id.is_empty() {
            return Ok(c.init.clone());
        }
        c.execs.get(exec_id).cloned().ok_or_else(|| err(Code::NOT_FOUND, format!("exec {exec_id} of {id} not found")))
    }

    fn update_proc(&self, id: &str, exec_id: &str, f: impl FnOnce(&mut Proc)) {
        let mut containers = self.containers();
        if let Some(c) = containers.get_mut(id) {
            let p = if exec_id.is_empty() { Some(&mut c.init) } else { c.execs.get_mut(exec_id) };
            if let Some(p) = p {
                f(p);
            }
        }
    }

    /// Boots the sandbox VM unless it runs: `first` is the container that
    /// causes the boot, whose spec sizes the VM and names its network.
    async fn ensure_sandbox(
        &self,
        first: &str,
        bundle: &Path,
        config: &RuntimeConfig,
        spec: &ContainerSpec,
    ) -> TtrpcResult<Arc<Sandbox>> {
        let mut guard = self.inner.sandbox.lock().await;
        if let Some(sandbox) = guard.clone() {
            return Ok(sandbox);
        }
        let opts = spec.boot_options(config).map_err(core_err)?;
        let (config, first, bundle) = (config.clone(), first.to_string(), bundle.to_path_buf());
        let sandbox =
            blocking(move || Sandbox::start(&config, &first, opts, Some(&bundle))).await?.map_err(core_err)?;
        let sandbox = Arc::new(sandbox);
        *guard = Some(sandbox.clone());
        self.watch_sandbox(sandbox.clone());
        Ok(sandbox)
    }

    /// CRI's sandbox container: boots the VM; nothing runs in the guest.
    async fn create_virtual_sandbox(
        &self,
        req: &api::CreateTaskRequest,
        config: &RuntimeConfig,
        spec: &ContainerSpec,
    ) -> TtrpcResult<u32> {
        if self.inner.sandbox.lock().await.is_some() {
            return Err(err(Code::ALREADY_EXISTS, format!("sandbox {}: this shim already runs a sandbox VM", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        let sandbox = self.ensure_sandbox(&req.id, &bundle, config, spec).await?;
        let mut init = Proc::new(StdioPaths::default(), Vec::new());
        init.pid = sandbox.vmm_pid();
        let pid = init.pid;
        let container = Container { bundle, mounted_bundle: false, virtual_sandbox: true, init, execs: HashMap::new() };
        self.containers().insert(req.id.clone(), container);
        Ok(pid)
    }

    async fn create_inner(&self, req: &api::CreateTaskRequest) -> TtrpcResult<(u32, bool)> {
        let config_path = options::config_path(req.options.as_ref()).map_err(|e| err(Code::INVALID_ARGUMENT, e))?;
        let config = RuntimeConfig::load(config_path.as_deref().map(std::path::Path::new))
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        let bundle = PathBuf::from(&req.bundle);
        let spec = ContainerSpec::read(&bundle).map_err(core_err)?;
        if spec.kind == Kind::Sandbox {
            return self.create_virtual_sandbox(req, &config, &spec).await.map(|pid| (pid, false));
        }
        let root = bundle::mount_rootfs(&bundle, &req.rootfs, &spec).map_err(core_err)?;
        let mounted_bundle = !req.rootfs.is_empty();
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let undo_bundle = || {
            if mounted_bundle {
                bundle::unmount_rootfs(&bundle);
            }
        };
        let sandbox = match self.ensure_sandbox(&req.id, &bundle, &config, &spec).await {
            Ok(sandbox) => sandbox,
            Err(e) => {
                undo_bundle();
                return Err(e);
            }
        };
        let (id, st, sb) = (req.id.clone(), stdio.clone(), sandbox.clone());
        let added = blocking(move || sb.add_container(&id, &spec, &root, &st)).await?;
        let (pid, io) = match added {
            Ok(v) => v,
            Err(e) => {
                undo_bundle();
                if self.containers().is_empty() {
                    self.destroy_sandbox().await;
                }
                return Err(task_err(e));
            }
        };
        let mut proc = Proc::new(stdio, Vec::new());
        proc.pid = pid;
        *proc.io.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(io);
        let container =
            Container { bundle, mounted_bundle, virtual_sandbox: false, init: proc.clone(), execs: HashMap::new() };
        self.containers().insert(req.id.clone(), container);
        // The init exists in the guest from now on, started or not: as
        // runc's shim reaps its init whenever it dies, its exit is reported
        // from here (a created task that is killed, never started, exits).
        self.watch_exit(sandbox, req.id.clone(), String::new(), proc);
        Ok((pid, mounted_bundle))
    }

    fn is_virtual(&self, id: &str) -> bool {
        self.containers().get(id).is_some_and(|c| c.virtual_sandbox)
    }

    /// Records the exit of process `exec_id` of `id` and publishes it, the
    /// first time only (an agent wait and the sandbox watcher may both
    /// report a process of a VM that died).
    async fn finish(&self, id: &str, exec_id: &str, exit: Exit) {
        let Ok(proc) = self.proc(id, exec_id) else { return };
        if proc.task.finish(exit) {
            self.publish_exit(id, exec_id, proc.pid, exit).await;
        }
    }

    /// Watches the sandbox VM while it is this shim's: once it is gone
    /// (the VMM or virtiofsd killed, the guest reset), every process no
    /// agent wait will report — created but not started, and CRI's
    /// virtual sandbox — exits with [`VM_GONE_STATUS`]. Started processes
    /// are reported by their own waits ([`Self::watch_exit`]).
    fn watch_sandbox(&self, sandbox: Arc<Sandbox>) {
        let service = self.clone();
        tokio::spawn(async move {
            // It keeps watching after the VM died, until the sandbox is
            // destroyed: a create in flight when the VM died registers its
            // container after the first look.
            let mut logged = false;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let current = service.inner.sandbox.lock().await.clone();
                if !current.is_some_and(|s| Arc::ptr_eq(&s, &sandbox)) {
                    return;
                }
                let Some(why) = sandbox.exited() else { continue };
                let pending: Vec<(String, String)> = service
                    .containers()
                    .iter()
                    .flat_map(|(id, c)| {
                        let created = |p: &Proc| p.task.status() == TaskStatus::Created;
                        let init = (c.virtual_sandbox || created(&c.init)).then_some((id, "", &c.init));
                        let execs = c.execs.iter().filter(move |(_, p)| created(p));
                        init.into_iter().chain(execs.map(move |(e, p)| (id, e.as_str(), p)))
                    })
                    .filter(|(_, _, p)| p.task.exit().is_none())
                    .map(|(id, exec, _)| (id.clone(), exec.to_string()))
                    .collect();
                if !pending.is_empty() && !logged {
                    log::error!("the sandbox VM is gone ({why}); guest console:\n{}", sandbox.console_tail());
                    logged = true;
                }
                for (id, exec_id) in pending {
                    service.finish(&id, &exec_id, Exit::now(VM_GONE_STATUS)).await;
                }
            }
        });
    }

    /// Starts the virtual sandbox: it runs until killed or until the VM
    /// dies, which the sandbox watcher notices.
    async fn start_virtual(&self, id: &str) -> TtrpcResult<api::StartResponse> {
        let proc = self.proc(id, "")?;
        proc.task.started();
        let pid = proc.pid;
        let mut ev = TaskStart::new();
        ev.container_id = id.to_string();
        ev.pid = pid;
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev)).await;
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    /// Ends every container's VM and the shim (SIGTERM).
    pub async fn terminate(&self) {
        self.destroy_sandbox().await;
        self.inner.exit.signal();
    }

    async fn destroy_sandbox(&self) {
        let sandbox = self.inner.sandbox.lock().await.take();
        if let Some(sandbox) = sandbox {
            let _ = blocking(move || sandbox.destroy()).await;
        }
    }

    /// Waits for a started process in the background and reports its exit.
    fn watch_exit(&self, sandbox: Arc<Sandbox>, id: String, exec_id: String, proc: Proc) {
        let service = self.clone();
        tokio::spawn(async move {
            let (cid, eid) = (id.clone(), exec_id.clone());
            let sb = sandbox.clone();
            let waited = blocking(move || sb.wait_process(&cid, &eid)).await;
            let (exit, oom) = match waited {
                Ok(Ok(resp)) => (Exit { status: resp.exit_status, at_ns: resp.exited_at_ns }, resp.oom_killed),
                Ok(Err(e)) => {
                    let why = sandbox.exited().unwrap_or_else(|| e.to_string());
                    log::error!("lost {id}/{exec_id}: {why}; guest console:\n{}", sandbox.console_tail());
                    (Exit::now(VM_GONE_STATUS), false)
                }
                Err(e) => {
                    log::error!("waiting for {id}/{exec_id}: {e}");
                    (Exit::now(VM_GONE_STATUS), false)
                }
            };
            log::info!("phase exited {id} {exec_id} {}", exit.status);
            let io = proc.io.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
            if let Some(mut io) = io {
                io.wait_output(OUTPUT_GRACE).await;
                io.close_stdin();
            }
            log::info!("phase output-drained {id} {exec_id}");
            if oom && exec_id.is_empty() {
                let mut ev = TaskOOM::new();
                ev.container_id = id.clone();
                service.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev)).await;
            }
            service.finish(&id, &exec_id, exit).await;
        });
    }

    /// TaskExit of process `exec_id` ("" = init) of container `id`.
    async fn publish_exit(&self, id: &str, exec_id: &str, pid: u32, exit: Exit) {
        let mut ev = TaskExit::new();
        ev.container_id = id.to_string();
        ev.id = if exec_id.is_empty() { id.to_string() } else { exec_id.to_string() };
        ev.pid = pid;
        ev.exit_status = exit.status;
        ev.exited_at = protobuf::MessageField::some(exit_ts(&exit));
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev)).await;
    }

    async fn publish_delete(&self, id: &str, pid: u32, exit: Exit) {
        let mut ev = TaskDelete::new();
        ev.container_id = id.to_string();
        ev.pid = pid;
        ev.exit_status = exit.status;
        ev.exited_at = protobuf::MessageField::some(exit_ts(&exit));
        ev.id = id.to_string();
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev)).await;
    }

    /// Runs an agent call on the sandbox's client off the async runtime.
    async fn agent_call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&AgentClient) -> Result<R, AgentClientError> + Send + 'static,
    ) -> TtrpcResult<R> {
        let sandbox = self.sandbox().await?;
        blocking(move || {
            f(sandbox.client()).map_err(|e| {
                // A transport failure (timeout, lost connection) is ours to
                // debug, not the caller's: keep the guest's view in the log.
                if e.agent_status().is_none() {
                    log::error!("{e}; guest console:\n{}", sandbox.console_tail());
                }
                agent_err(e)
            })
        })
        .await?
    }
}

#[async_trait]
impl Task for Service {
    async fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        if self.containers().contains_key(&req.id) {
            return Err(err(Code::ALREADY_EXISTS, format!("container {} already exists", req.id)));
        }
        // The phase lines (request, created, running) are what the ctr
        // benchmark (tests/src/bin/bench_ctr.rs) reads from the log.
        log::info!("phase create-request {}", req.id);
        // The work runs apart from this RPC's future, which ttrpc drops when
        // containerd's connection closes (containerd died): see `abandon`.
        let first = self.containers().is_empty();
        let (me, owned) = (self.clone(), req.clone());
        let created = tokio::spawn(async move {
            let created = tokio::select! {
                created = me.create_inner(&owned) => created,
                () = super::abandon::containerd_gone(), if first => {
                    super::abandon::abandon(&owned.id, std::path::Path::new(&owned.bundle))
                }
            };
            let id = owned.id.clone();
            let alone = move || me.containers().keys().all(|k| *k == id);
            super::abandon::after_first_create(first, &owned.id, &owned.bundle, created, alone)
        });
        let (pid, _) = created.await.map_err(|e| err(Code::INTERNAL, format!("create {}: {e}", req.id)))??;
        log::info!("phase created {}", req.id);
        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        ev.io = protobuf::MessageField::some(TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        });
        ev.pid = pid;
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev)).await;
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        super::abandon::claim(&req.id);
        let sandbox = self.sandbox().await?;
        let proc = self.proc(&req.id, &req.exec_id)?;
        proc.task.check_start(&format!("{} {}", req.id, req.exec_id)).map_err(core_err)?;
        if req.exec_id.is_empty() && self.is_virtual(&req.id) {
            return self.start_virtual(&req.id).await;
        }
        log::info!("phase start-request {} {}", req.id, req.exec_id);
        let (id, exec_id, sb, p) = (req.id.clone(), req.exec_id.clone(), sandbox.clone(), proc.clone());
        let pid = blocking(move || -> Result<u32, CoreError> {
            if exec_id.is_empty() {
                return sb.start_container(&id);
            }
            let (pid, io) = sb.exec_process(&id, &exec_id, p.spec.clone(), &p.stdio)?;
            *p.io.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(io);
            Ok(pid)
        })
        .await?
        .map_err(task_err)?;
        self.update_proc(&req.id, &req.exec_id, |p| p.pid = pid);
        // The sandbox watcher may have ended it meanwhile (the VM died while
        // the start was in flight): then it stays stopped.
        proc.task.started();
        if !req.exec_id.is_empty() {
            // An init's exit is watched from its create.
            let mut proc = proc;
            proc.pid = pid;
            self.watch_exit(sandbox, req.id.clone(), req.exec_id.clone(), proc);
        }
        log::info!("phase running {} {}", req.id, req.exec_id);
        if req.exec_id.is_empty() {
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = pid;
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev)).await;
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = req.id.clone();
            ev.exec_id = req.exec_id.clone();
            ev.pid = pid;
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev)).await;
        }
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        super::abandon::claim(&req.id);
        let proc = self.proc(&req.id, &req.exec_id)?;
        proc.task.check_delete(&format!("{} {}", req.id, req.exec_id)).map_err(core_err)?;
        let exit = proc.task.exit().unwrap_or_else(|| Exit::now(0));
        if !req.exec_id.is_empty() {
            if let Some(c) = self.containers().get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
            }
        } else if self.is_virtual(&req.id) {
            self.containers().remove(&req.id);
            if self.containers().is_empty() {
                self.destroy_sandbox().await;
            }
            self.publish_delete(&req.id, proc.pid, exit).await;
        } else {
            let sandbox = self.inner.sandbox.lock().await.clone();
            if let Some(sandbox) = sandbox {
                let id = req.id.clone();
                let _ = blocking(move || sandbox.remove_container(&id)).await;
            }
            let container = self.containers().remove(&req.id);
            if let Some(c) = container {
                if let Some(mut io) = c.init.io.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                    io.close_stdin();
                }
                if c.mounted_bundle {
                    bundle::unmount_rootfs(&c.bundle);
                }
            }
            if self.containers().is_empty() {
                self.destroy_sandbox().await;
            }
            self.publish_delete(&req.id, proc.pid, exit).await;
        }
        Ok(api::DeleteResponse {
            pid: proc.pid,
            exit_status: exit.status,
            exited_at: protobuf::MessageField::some(exit_ts(&exit)),
            ..Default::default()
        })
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let spec = req.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        {
            let mut containers = self.containers();
            let c = containers
                .get_mut(&req.id)
                .ok_or_else(|| err(Code::NOT_FOUND, format!("container {} not found", req.id)))?;
            if c.execs.contains_key(&req.exec_id) {
                return Err(err(Code::ALREADY_EXISTS, format!("exec {} already exists", req.exec_id)));
            }
            c.execs.insert(req.exec_id.clone(), Proc::new(stdio, spec));
        }
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev)).await;
        Ok(api::Empty::new())
    }

    async fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let proc = self.proc(&req.id, &req.exec_id)?;
        let bundle = self.containers().get(&req.id).map(|c| c.bundle.display().to_string()).unwrap_or_default();
        let mut resp = api::StateResponse {
            id: if req.exec_id.is_empty() { req.id.clone() } else { req.exec_id.clone() },
            bundle,
            pid: proc.pid,
            stdin: proc.stdio.stdin.clone(),
            stdout: proc.stdio.stdout.clone(),
            stderr: proc.stdio.stderr.clone(),
            terminal: proc.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        resp.status = status_code(proc.task.status()).into();
        if let Some(exit) = proc.task.exit() {
            resp.exit_status = exit.status;
            resp.exited_at = protobuf::MessageField::some(exit_ts(&exit));
        }
        Ok(resp)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        if self.is_virtual(&req.id) {
            let pid = self.proc(&req.id, "")?.pid;
            let info = containerd_shim::protos::types::task::ProcessInfo { pid, ..Default::default() };
            return Ok(api::PidsResponse { processes: vec![info], ..Default::default() });
        }
        let id = req.id.clone();
        let pids = self.agent_call(move |c| c.list_pids(&id)).await?;
        let processes = pids
            .pids
            .iter()
            .map(|pid| containerd_shim::protos::types::task::ProcessInfo { pid: *pid, ..Default::default() })
            .collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let id = req.id.clone();
        self.agent_call(move |c| c.pause_container(&id)).await?;
        if let Ok(proc) = self.proc(&req.id, "") {
            proc.task.paused();
        }
        let mut ev = TaskPaused::new();
        ev.container_id = req.id.clone();
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev)).await;
        Ok(api::Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let id = req.id.clone();
        self.agent_call(move |c| c.resume_container(&id)).await?;
        if let Ok(proc) = self.proc(&req.id, "") {
            proc.task.resumed();
        }
        let mut ev = TaskResumed::new();
        ev.container_id = req.id.clone();
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev)).await;
        Ok(api::Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        super::abandon::claim(&req.id);
        let proc = self.proc(&req.id, &req.exec_id)?;
        if !req.all {
            proc.task.check_signal(&proc.pid.to_string()).map_err(core_err)?;
        }
        if req.exec_id.is_empty() && self.is_virtual(&req.id) {
            // As the pause process: SIGTERM/SIGINT end it with status 0,
            // SIGKILL with 137; it ignores other signals.
            let status = match req.signal as i32 {
                libc::SIGKILL => 128 + libc::SIGKILL as u32,
                libc::SIGTERM | libc::SIGINT => 0,
                _ => return Ok(api::Empty::new()),
            };
            self.finish(&req.id, "", Exit::now(status)).await;
            return Ok(api::Empty::new());
        }
        log::info!("phase kill-request {} {} {}", req.id, req.exec_id, req.signal);
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        self.agent_call(move |c| c.signal_process(&req.id, &req.exec_id, req.signal, req.all)).await?;
        log::info!("phase killed {id} {exec_id}");
        Ok(api::Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        self.agent_call(move |c| c.resize_tty(&req.id, &req.exec_id, req.width, req.height)).await?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let proc = self.proc(&req.id, &req.exec_id)?;
        if req.stdin {
            if let Some(io) = proc.io.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_mut() {
                io.close_stdin();
            }
        }
        Ok(api::Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let mut ureq = UpdateContainerRequest::new();
        ureq.container_id = req.id.clone();
        ureq.resources_json = req.resources.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        self.agent_call(move |c| c.update_container(&ureq)).await?;
        Ok(api::Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        // Only a watch is held: a task deleted before it started ends the
        // wait (containerd's exec path waits before a start that may fail).
        let watch = self.proc(&req.id, &req.exec_id)?.task.exit_watch();
        let exit = watch.wait().await.ok_or_else(|| err(Code::INTERNAL, "exit channel closed"))?;
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: protobuf::MessageField::some(exit_ts(&exit)),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        if self.is_virtual(&req.id) {
            return Err(err(
                Code::UNIMPLEMENTED,
                format!("{} is the pod's VM, not a guest container: ask for its containers' stats", req.id),
            ));
        }
        let id = req.id.clone();
        let stats = self.agent_call(move |c| c.stats_container(&id)).await?;
        let any = metrics::to_any(&stats).map_err(|e| err(Code::INTERNAL, e))?;
        Ok(api::StatsResponse { stats: protobuf::MessageField::some(any), ..Default::default() })
    }

    async fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.containers().get(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if !self.containers().is_empty() {
            return Ok(api::Empty::new());
        }
        self.destroy_sandbox().await;
        self.inner.exit.signal();
        Ok(api::Empty::new())
    }

    async fn checkpoint(&self, _ctx: &TtrpcContext, _req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        Err(err(
            Code::UNIMPLEMENTED,
            "checkpoint is not implemented by kata-like yet (VM snapshots are a separate issue)",
        ))
    }
}
