//! A CRI client for the tests: the generated CRI v1 API (`k8s-cri`, tonic)
//! against a private containerd's CRI plugin, with a CNI bridge network of
//! its own (Debian's containernetworking-plugins: bridge + host-local +
//! loopback). This is what kubelet does to containerd, minus kubelet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatus, CreateContainerRequest, DnsConfig, ExecSyncRequest, ImageSpec,
    KeyValue, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint};

use crate::containerd::{Containerd, IMAGE};

/// The RuntimeClass handler that maps to our shim in the test config.
pub const HANDLER: &str = "kata-like";

/// Debian's CNI plugin directory.
pub const CNI_BIN: &str = "/usr/lib/cni";

/// Why the CRI tests cannot run, if they cannot.
pub fn unavailable() -> Option<String> {
    if let Some(why) = crate::containerd::unavailable() {
        return Some(why);
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new(CNI_BIN).join(plugin).exists() {
            return Some(format!(
                "CNI plugin {CNI_BIN}/{plugin} is missing (scripts/install-deps.sh installs containernetworking-plugins)"
            ));
        }
    }
    None
}

/// A CNI bridge network private to one test run: its own bridge name,
/// subnet and IPAM state. Dropping it deletes the bridge.
#[derive(Debug)]
pub struct CniBridge {
    dir: tempfile::TempDir,
    /// The Linux bridge CNI creates.
    pub bridge: String,
    /// The first three octets of the /24 subnet; the bridge is `.1`.
    pub prefix: String,
}

impl CniBridge {
    /// Writes the network config (not yet the bridge: CNI makes it with the
    /// first pod).
    pub fn new() -> Result<CniBridge, String> {
        let dir = tempfile::Builder::new().prefix("kl-cni-").tempdir().map_err(|e| e.to_string())?;
        let n = std::process::id() % 200 + 20;
        let bridge = format!("klcni{n}");
        let prefix = format!("10.216.{n}");
        let conf = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "kata-like-test",
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("{prefix}.0/24")}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": dir.path().join("ipam"),
                },
            }],
        });
        std::fs::create_dir_all(dir.path().join("net.d")).map_err(|e| e.to_string())?;
        std::fs::write(dir.path().join("net.d/10-kata-like-test.conflist"), conf.to_string())
            .map_err(|e| e.to_string())?;
        Ok(CniBridge { dir, bridge, prefix })
    }

    /// The CNI config directory for containerd.
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// Interfaces still enslaved to the bridge (pods' host-side veths).
    pub fn ports(&self) -> Vec<String> {
        crate::ip(&["-o", "link", "show", "master", &self.bridge])
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
            .collect()
    }
}

impl Drop for CniBridge {
    fn drop(&mut self) {
        let _ = crate::ip(&["link", "del", &self.bridge]);
    }
}

/// The pod's network and IPC, a PID namespace per container: kubelet's
/// choice unless the pod sets shareProcessNamespace.
fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// Pod cgroups under `/sys/fs/cgroup[/<hierarchy>]/<root>/<pod>`, as
/// kubelet's cgroupfs driver names them (kubelet creates them; here the
/// runtimes create them on first use). Removed, deepest first, on drop.
#[derive(Debug)]
pub struct PodCgroups {
    root: String,
}

impl PodCgroups {
    fn new() -> PodCgroups {
        PodCgroups { root: format!("kl-cri-{}", std::process::id()) }
    }

    /// The pod's `cgroup_parent`.
    pub fn parent(&self, pod: &str) -> String {
        format!("/{}/{pod}", self.root)
    }

    /// `<root>` in every mounted hierarchy (one on a cgroup v2 host).
    fn roots(&self) -> Vec<PathBuf> {
        let base = Path::new("/sys/fs/cgroup");
        if base.join("cgroup.controllers").exists() {
            return vec![base.join(&self.root)];
        }
        let Ok(entries) = std::fs::read_dir(base) else { return Vec::new() };
        entries.flatten().map(|e| e.path().join(&self.root)).filter(|p| p.is_dir()).collect()
    }

    /// The cgroups below pod `pod`'s, in every hierarchy.
    pub fn children(&self, pod: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for root in self.roots() {
            if let Ok(entries) = std::fs::read_dir(root.join(pod)) {
                found.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
            }
        }
        found
    }
}

/// Removes a cgroup directory tree (cgroupfs takes rmdir only).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Drop for PodCgroups {
    fn drop(&mut self) {
        for root in self.roots() {
            remove_cgroup(&root);
        }
    }
}

/// A private containerd with CRI and CNI, and a CRI client to it.
#[derive(Debug)]
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    /// The containerd (dropped after the client).
    pub containerd: Containerd,
    /// The pods' host cgroups (removed after containerd stops).
    pub cgroups: PodCgroups,
    /// Its CNI network.
    pub network: CniBridge,
    logs: tempfile::TempDir,
}

impl Cri {
    /// Starts containerd with CRI on a fresh CNI bridge and connects.
    pub fn start() -> Result<Cri, String> {
        Cri::start_with("")
    }

    /// [`Cri::start`] with more kata-like runtime config lines (e.g.
    /// [`crate::containerd::COLD_BOOT`]).
    pub fn start_with(extra_runtime_config: &str) -> Result<Cri, String> {
        let network = CniBridge::new()?;
        let containerd = Containerd::start_cri(&network.conf_dir(), extra_runtime_config)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let socket = containerd.socket().to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is required by tonic and unused: the connector
                // dials containerd's Unix socket.
                Endpoint::try_from("http://[::1]:50051")?
                    .connect_with_connector(tower::service_fn(move |_| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("connect to CRI: {e}"))?;
        let logs = tempfile::Builder::new().prefix("kl-pod-logs-").tempdir().map_err(|e| e.to_string())?;
        let cgroups = PodCgroups::new();
        Ok(Cri { rt, runtime: RuntimeServiceClient::new(channel), containerd, cgroups, network, logs })
    }

    /// For VM test `test`: a started CRI containerd, or `None` when the
    /// test is skipped (the reason reported).
    pub fn for_test(test: &str) -> Option<Cri> {
        crate::vm_test(test)?;
        if let Some(reason) = unavailable() {
            crate::skip(test, &reason);
            return None;
        }
        Some(Cri::start().unwrap_or_else(|e| panic!("{test}: {e}")))
    }

    /// What failure messages carry: containerd's log tail.
    pub fn context(&self) -> String {
        format!("\n--- containerd log (tail) ---\n{}", self.containerd.log_tail())
    }

    /// Runs a RuntimeService call.
    pub fn call<T, F>(&self, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt.block_on(f(self.runtime.clone())).map(tonic::Response::into_inner)
    }

    /// A pod config: name `name` (also its hostname and uid), logs in a
    /// directory of its own, DNS as kubelet would set it.
    pub fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let log_directory = self.logs.path().join(name);
        let _ = std::fs::create_dir_all(&log_directory);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "kl-test".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: log_directory.display().to_string(),
            dns_config: Some(DnsConfig {
                servers: vec![format!("{}.1", self.network.prefix)],
                searches: vec!["kl-test.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            // As kubelet sends it for a pod without shareProcessNamespace.
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                cgroup_parent: self.cgroups.parent(name),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with our handler; the pod's id.
    pub fn run_pod(&self, config: &PodSandboxConfig) -> Result<String, tonic::Status> {
        self.run_pod_with(config, HANDLER)
    }

    /// [`Cri::run_pod`] with runtime handler `handler` (e.g.
    /// [`crate::containerd::COLD_HANDLER`]).
    pub fn run_pod_with(&self, config: &PodSandboxConfig, handler: &str) -> Result<String, tonic::Status> {
        let req = RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
        self.call(|mut c| async move { c.run_pod_sandbox(req).await }).map(|r| r.pod_sandbox_id)
    }

    /// A container config running `args` in the test image.
    pub fn container_config(name: &str, args: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: IMAGE.into(), ..Default::default() }),
            args: args.iter().map(|a| a.to_string()).collect(),
            log_path: format!("{name}.log"),
            envs: vec![KeyValue { key: "KL_TEST".into(), value: name.into() }],
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A bind mount of a host path.
    pub fn mount(host: &Path, container: &str, readonly: bool) -> Mount {
        Mount {
            host_path: host.display().to_string(),
            container_path: container.into(),
            readonly,
            ..Default::default()
        }
    }

    /// A memory limit for a container config.
    pub fn memory_limit(config: &mut ContainerConfig, bytes: i64) {
        let linux = config.linux.get_or_insert_with(LinuxContainerConfig::default);
        let res = linux.resources.get_or_insert_with(LinuxContainerResources::default);
        res.memory_limit_in_bytes = bytes;
    }

    /// CreateContainer + StartContainer; the container's id.
    pub fn start_container(
        &self,
        pod: &str,
        pod_config: &PodSandboxConfig,
        config: ContainerConfig,
    ) -> Result<String, tonic::Status> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(pod_config.clone()),
        };
        let id = self.call(|mut c| async move { c.create_container(req).await })?.container_id;
        let start = StartContainerRequest { container_id: id.clone() };
        self.call(|mut c| async move { c.start_container(start).await })?;
        Ok(id)
    }

    /// ExecSync: exit code, stdout, stderr.
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<(i32, String, String), tonic::Status> {
        self.exec_sync_within(id, cmd, 240)
    }

    /// [`Cri::exec_sync`] with a deadline of `timeout` seconds.
    pub fn exec_sync_within(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<(i32, String, String), tonic::Status> {
        let req =
            ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|a| a.to_string()).collect(), timeout };
        let r = self.call(|mut c| async move { c.exec_sync(req).await })?;
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    /// ContainerStatus.
    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        let req = k8s_cri::v1::ContainerStatusRequest { container_id: id.into(), verbose: false };
        self.call(|mut c| async move { c.container_status(req).await })?
            .status
            .ok_or_else(|| tonic::Status::not_found(format!("no status for {id}")))
    }

    /// Polls ContainerStatus until the container exited (up to `timeout`).
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> Result<ContainerStatus, String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let status = self.container_status(id).map_err(|e| e.to_string())?;
            if status.state == k8s_cri::v1::ContainerState::ContainerExited as i32 {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("{id} did not exit within {timeout:?}: {status:?}"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// StopContainer with a grace period.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let req = StopContainerRequest { container_id: id.into(), timeout };
        self.call(|mut c| async move { c.stop_container(req).await }).map(drop)
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = RemoveContainerRequest { container_id: id.into() };
        self.call(|mut c| async move { c.remove_container(req).await }).map(drop)
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let stop = StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.call(|mut c| async move { c.stop_pod_sandbox(stop).await })?;
        let remove = RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.call(|mut c| async move { c.remove_pod_sandbox(remove).await }).map(drop)
    }

    /// The pod's IP from PodSandboxStatus.
    pub fn pod_ip(&self, id: &str) -> Result<String, String> {
        let req = k8s_cri::v1::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false };
        let status = self.call(|mut c| async move { c.pod_sandbox_status(req).await }).map_err(|e| e.to_string())?;
        let status = status.status.ok_or("no pod status")?;
        if status.state != k8s_cri::v1::PodSandboxState::SandboxReady as i32 {
            return Err(format!("pod {id} is not ready: {status:?}"));
        }
        Ok(status.network.map(|n| n.ip).unwrap_or_default())
    }

    /// The CRI log file of a container of pod `pod_name`.
    pub fn log_file(&self, pod_name: &str, container_name: &str) -> PathBuf {
        self.logs.path().join(pod_name).join(format!("{container_name}.log"))
    }

    /// Network namespaces CNI made (`/var/run/netns/cni-*`).
    pub fn cni_netns() -> Vec<String> {
        std::fs::read_dir("/var/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("cni-"))
            .collect()
    }
}

/// Pods a test made, removed when dropped (best effort), so a failing test
/// still stops its runc pods, whose processes would otherwise outlive the
/// test's containerd.
#[derive(Debug)]
pub struct Pods<'a> {
    cri: &'a Cri,
    ids: Vec<String>,
}

impl<'a> Pods<'a> {
    /// None yet.
    pub fn new(cri: &'a Cri) -> Pods<'a> {
        Pods { cri, ids: Vec::new() }
    }

    /// Tracks pod `id`.
    pub fn push(&mut self, id: String) {
        self.ids.push(id);
    }

    /// StopPodSandbox + RemovePodSandbox of every pod, the first error
    /// returned (the rest are still removed).
    pub fn remove_all(&mut self) -> Result<(), tonic::Status> {
        let mut first = Ok(());
        for id in std::mem::take(&mut self.ids) {
            if let Err(e) = self.cri.remove_pod(&id) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

impl Drop for Pods<'_> {
    fn drop(&mut self) {
        let _ = self.remove_all();
    }
}

/// A tmpfs mounted on the host (made shared with `shared`), unmounted on
/// drop.
#[derive(Debug)]
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    /// A tmpfs of `size` (mount(8)'s `size=`) at `dir`, created.
    pub fn new(dir: PathBuf, size: &str, shared: bool) -> Tmpfs {
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mount = |args: &[&str]| {
            let out = std::process::Command::new("mount").args(args).arg(&dir).output().expect("mount");
            assert!(out.status.success(), "mount {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        mount(&["-t", "tmpfs", "-o", &format!("size={size},mode=1777"), "kl"]);
        if shared {
            mount(&["--make-shared"]);
        }
        Tmpfs(dir)
    }

    /// A memory-backed emptyDir as kubelet makes it: a tmpfs at
    /// `root/volumes/kubernetes.io~empty-dir/<name>`.
    pub fn empty_dir(root: &Path, name: &str, size: &str) -> Tmpfs {
        Tmpfs::new(root.join("volumes/kubernetes.io~empty-dir").join(name), size, false)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
