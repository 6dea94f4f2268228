//! The shim's sandbox: the microVM (VMM + virtiofsd children), its state
//! directory `<state_root>/<sandbox id>` (vsock socket, logs: vmm.log,
//! console.log with the agent's log, virtiofsd.log) and the shared
//! directory containers' rootfs are bound into. Used by the shim and by
//! the standalone `kata-like run` (crate::standalone) alike.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kata_like_protocol::agent::{
    ContainerRequest, CreateContainerRequest, SetupSandboxRequest, Storage, WaitProcessResponse,
};
use kata_like_protocol::{AgentClient, INIT_EXEC_ID};

use super::io::{ProcessIo, StdioPaths};
use super::rootfs;
use super::rpc::agent_message;
use crate::config::RuntimeConfig;
use crate::sandbox::{NetDevice, SandboxVm, VmSpec};
use crate::virtiofsd::SharedFs;

/// The virtio-fs tag of the shared directory.
pub const SHARED_TAG: &str = "kataShared";

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    vm: Mutex<Option<SandboxVm>>,
    client: AgentClient,
    uds: PathBuf,
    state: PathBuf,
    shared: PathBuf,
    rpc_timeout: std::time::Duration,
    /// The pod NIC's tap (kept until the sandbox is destroyed).
    network: Mutex<Option<NetDevice>>,
}

/// How a sandbox's VM differs from the runtime config's defaults.
#[derive(Debug, Default)]
pub struct BootOptions {
    /// vCPUs (default: the config's).
    pub vcpus: Option<u8>,
    /// Memory in MiB (default: the config's).
    pub memory_mib: Option<u32>,
    /// The pod's network, given to the guest as a virtio-net NIC.
    pub network: Option<crate::network::PodNetwork>,
    /// The SetupSandbox request to send (hostname); entropy, clock and
    /// shared file system are filled in here.
    pub setup: SetupSandboxRequest,
    /// The first container's `linux.cgroupsPath`: the host cgroup of the
    /// VMM and virtiofsd ([`crate::cgroup`]).
    pub cgroups_path: String,
    /// Where the host's boot slots are ([`crate::boot_slots`]); default
    /// `<state_root>/boot-slots`.
    pub boot_slots: Option<PathBuf>,
}

/// The state directory's name for sandbox `id`: the id, or for long ids
/// (CRI's are 64 hex digits) a prefix and a hash of it, so the sockets in it
/// stay within the Unix socket path limit.
fn state_dir_name(id: &str) -> String {
    use std::hash::{Hash, Hasher};
    if id.len() <= 32 {
        return id.to_string();
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    let prefix: String = id.chars().take(12).collect();
    format!("{prefix}-{:016x}", h.finish())
}

/// A marker file so `delete_shim` knows which state directory is ours.
const STATE_LINK: &str = "kata-like-state";
/// In the state directory: the sandbox's host cgroup (its `cgroupsPath`).
const CGROUP_NOTE: &str = "cgroups-path";

fn random_bytes(n: usize) -> Vec<u8> {
    crate::sandbox::host_entropy(n).unwrap_or_else(|e| {
        log::warn!("no host entropy for the guest: {e}");
        vec![0u8; n]
    })
}

/// The VM of a sandbox under `config`: the configured VMM, kernel,
/// initramfs and kernel parameters, state in `state_dir`, and `shared`
/// served by virtiofsd under [`SHARED_TAG`]. No NIC, no host cgroup.
pub fn vm_spec(config: &RuntimeConfig, vcpus: u8, memory_mib: u32, state_dir: PathBuf, shared: PathBuf) -> VmSpec {
    VmSpec {
        vmm: config.vmm.clone(),
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        vcpus,
        memory_mib,
        extra_cmdline: Some(config.kernel_params.clone()).filter(|p| !p.is_empty()),
        boot_timeout: config.boot_timeout(),
        state_parent: None,
        vmm_args: Vec::new(),
        state_dir: Some(state_dir),
        shared: Some(SharedFs {
            virtiofsd: config.virtiofsd.clone(),
            dir: shared,
            tag: SHARED_TAG.into(),
            cache: config.virtiofsd_cache.clone(),
            extra_args: config.virtiofsd_args.clone(),
        }),
        net: None,
        cgroup: None,
        restore_from: None,
        confinement: config.confinement(),
    }
}

impl Sandbox {
    /// Prepares the state directory `<state_root>/<id>` and its shared
    /// directory (the caller then binds the first rootfs into it).
    pub fn prepare(config: &RuntimeConfig, id: &str) -> Result<(PathBuf, PathBuf), String> {
        let state = config.state_root.join(state_dir_name(id));
        crate::virtiofsd::check_socket_path(&state.join("virtiofsd.sock"))?;
        let shared = state.join("shared");
        rootfs::make_shared_dir(&shared)?;
        Ok((state, shared))
    }

    /// Notes in `bundle` where the sandbox state is, for
    /// [`cleanup_after_crash`].
    pub fn mark_bundle(bundle: &Path, state: &Path) {
        let _ = std::fs::write(bundle.join(STATE_LINK), state.display().to_string());
    }

    /// Boots the VM sharing `shared` and sets up the guest.
    pub fn boot(config: &RuntimeConfig, state: PathBuf, shared: PathBuf, opts: BootOptions) -> Result<Sandbox, String> {
        let mut forward = None;
        let network = opts.network.map(|mut pod| {
            forward = pod.forward.take();
            let request = pod.guest_request();
            let device =
                NetDevice { tap: std::sync::Arc::new(pod.tap), mac: pod.interface.mac.clone(), mtu: pod.interface.mtu };
            (device, request)
        });
        // Held until the guest is set up: booting is the CPU-bound phase.
        let slots_dir = opts.boot_slots.unwrap_or_else(|| config.state_root.join(crate::boot_slots::DIR));
        let slot = crate::boot_slots::acquire(&slots_dir, config.max_concurrent_boots(), config.boot_queue_timeout())
            .map_err(|e| e.to_string())?;
        // Every sandbox gets a host cgroup: the spec's, else one of ours
        // (`ctr run` and runc-style bundles may name none).
        let cgroups_path = match opts.cgroups_path.as_str() {
            "" => format!("/kata-like/{}", state.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
            named => named.to_string(),
        };
        let cgroup = crate::cgroup::HostCgroup::create(&cgroups_path)?.map(std::sync::Arc::new);
        // For the clean-up after a shim that dies (cleanup_after_crash).
        let _ = std::fs::write(state.join(CGROUP_NOTE), &cgroups_path);
        let vcpus = opts.vcpus.unwrap_or(config.vcpus);
        let memory_mib = opts.memory_mib.unwrap_or(config.memory_mib);
        let mut spec = vm_spec(config, vcpus, memory_mib, state.clone(), shared.clone());
        spec.net = network.as_ref().map(|(device, _)| device.clone());
        spec.cgroup = cgroup;
        let begin = std::time::Instant::now();
        if config.vm_templates && spec.net.is_none() {
            let shape = crate::template::Shape { vcpus: spec.vcpus, memory_mib: spec.memory_mib };
            match crate::template::ensure(config, &shape) {
                Ok((dir, _)) => spec.restore_from = Some(dir),
                Err(e) => log::warn!("no VM template ({e}); booting cold"),
            }
        }
        let vm = match (SandboxVm::start(&spec), spec.restore_from.take()) {
            (Ok(vm), restored) => {
                if let Some(dir) = restored {
                    log::info!("sandbox VM restored from template {}", dir.display());
                }
                vm
            }
            (Err(e), Some(dir)) if !e.interrupted() => {
                // Cold boot is always correct: the template may be corrupt
                // or from another VMM build the key did not catch. (A VMM
                // killed during the restore says nothing about the
                // template: that error goes to the caller.)
                log::warn!("restoring template {} failed ({e}); discarding it and booting cold", dir.display());
                crate::template::discard(&dir);
                SandboxVm::start(&spec).map_err(|e| e.to_string())?
            }
            (Err(e), _) => return Err(e.to_string()),
        };
        let booted_us = begin.elapsed().as_micros() as u64;
        let uds = vm.vsock_path();
        // The connection the boot check made, with the configured bound.
        let client = vm.agent().with_rpc_timeout(config.rpc_timeout());
        let mut req = opts.setup;
        req.entropy = random_bytes(256);
        req.realtime_ns = crate::sandbox::realtime_ns();
        req.shared_fs_tag = SHARED_TAG.into();
        client.setup_sandbox(&req).map_err(|e| format!("guest set-up failed: {}", agent_message(&e)))?;
        if let Some((_, net_req)) = &network {
            client
                .configure_network(net_req)
                .map_err(|e| format!("guest network set-up failed: {}", agent_message(&e)))?;
        }
        if let Some(listener) = forward {
            crate::network::forward::serve(listener, uds.clone());
        }
        let times = vm.boot_times();
        // Read by tests/src/bin/bench_ctr.rs: the first three are since the
        // VMM's spawn, "before VMM" is virtiofsd's start and the spawn.
        log::info!(
            "sandbox VM ready: first KVM_RUN {} us, guest init {} us, agent {} us, before VMM {} us, guest set-up {} us, queued {} us",
            times.first_kvm_run_us.unwrap_or(0),
            times.boot_timer_us.unwrap_or(0),
            times.agent_ready_us,
            booted_us.saturating_sub(times.agent_ready_us),
            (begin.elapsed().as_micros() as u64).saturating_sub(booted_us),
            slot.waited.as_micros()
        );
        drop(slot);
        Ok(Sandbox {
            vm: Mutex::new(Some(vm)),
            client,
            uds,
            state,
            shared,
            rpc_timeout: config.rpc_timeout(),
            network: Mutex::new(network.map(|(device, _)| device)),
        })
    }

    /// The agent client (bounded RPCs).
    pub fn client(&self) -> &AgentClient {
        &self.client
    }

    /// A fresh connection for a long poll (one per waiter, so waits never
    /// queue behind each other in the agent's per-connection thread pool).
    pub fn long_poll_client(&self) -> Result<AgentClient, String> {
        AgentClient::connect(&self.uds, self.rpc_timeout).map_err(|e| e.to_string())
    }

    /// The VMM's vsock socket.
    pub fn uds(&self) -> &Path {
        &self.uds
    }

    /// The shared directory.
    pub fn shared(&self) -> &Path {
        &self.shared
    }

    /// Creates container `id` from the guest spec `spec_json` with its
    /// rootfs at `rootfs` (relative to the shared directory), its stdio
    /// connected as `stdio` says; returns the guest PID and the I/O.
    pub fn create_container(
        &self,
        id: &str,
        spec_json: Vec<u8>,
        rootfs: String,
        storages: Vec<Storage>,
        stdio: &StdioPaths,
    ) -> Result<(u32, ProcessIo), String> {
        let io = ProcessIo::connect(&self.uds, id, INIT_EXEC_ID, stdio)?;
        let mut req = CreateContainerRequest::new();
        req.container_id = id.to_string();
        req.spec_json = spec_json;
        req.rootfs = rootfs;
        req.storages = storages;
        req.stdio = protobuf::MessageField::some(stdio.agent_stdio());
        let pid = self.client.create_container(&req).map_err(|e| agent_message(&e))?;
        Ok((pid, io))
    }

    /// Starts a created container; returns its init's guest PID.
    pub fn start_container(&self, id: &str) -> Result<u32, String> {
        self.client.start_container(id).map_err(|e| agent_message(&e))
    }

    /// Waits (on its own connection) until process `exec_id` ("" = init)
    /// of container `id` exits.
    pub fn wait_process(&self, id: &str, exec_id: &str) -> Result<WaitProcessResponse, String> {
        let client = self.long_poll_client()?;
        client.wait_process(id, exec_id).map_err(|e| agent_message(&e))
    }

    /// The VMM's host PID (what containerd sees as the sandbox's pid).
    pub fn vmm_pid(&self) -> u32 {
        let vm = self.vm.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        vm.as_ref().and_then(SandboxVm::vmm_pid).unwrap_or(0)
    }

    /// Why the VM is gone, if it is.
    pub fn exited(&self) -> Option<String> {
        let mut vm = self.vm.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        vm.as_mut().map_or(Some("stopped".into()), SandboxVm::exited)
    }

    /// The last lines of the guest console (for error reports).
    pub fn console_tail(&self) -> String {
        crate::sandbox::console_excerpt(&crate::sandbox::console_path(&self.state), 10)
    }

    /// Stops the VM and removes all host state of the sandbox.
    pub fn destroy(&self) {
        // No guest shutdown: nothing in the guest needs flushing (container
        // files live on the host behind virtio-fs, written through), and
        // the emulated guest's power-off took longer than the 5 s we gave
        // it, every time. SIGTERM stops the VMM at once.
        let vm = self.vm.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(mut vm) = vm {
            vm.kill();
        }
        // Our copy of the tap: with the VMM's gone, the tap goes too.
        drop(self.network.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
        rootfs::remove_dir_mounts(&self.shared);
        if std::env::var_os("KATA_LIKE_KEEP_STATE").is_none() {
            rootfs::remove_tree(&self.state);
        }
    }
}

/// After a shim crash: unmount and remove the state a dead shim left.
pub fn cleanup_after_crash(id: &str, bundle: &Path) {
    if let Ok(state) = std::fs::read_to_string(bundle.join(STATE_LINK)) {
        let state = PathBuf::from(state.trim());
        rootfs::remove_dir_mounts(&state.join("shared"));
        // The VMM and virtiofsd died with the shim (PDEATHSIG): their
        // cgroup is empty, or about to be.
        if let Ok(path) = std::fs::read_to_string(state.join(CGROUP_NOTE)) {
            crate::cgroup::remove_leftover(&path);
        }
        rootfs::remove_tree(&state);
    }
    let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
    log::info!("cleaned up after shim of {id}");
}

/// A request naming container `id`.
pub fn container_req(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.to_string();
    r
}

/// The guest's copy of an OCI spec (`config.json` bytes) and its root path:
/// what the guest cannot honour is dropped with a log line rather than
/// failing the container.
pub fn guest_spec(raw: &[u8]) -> Result<(serde_json::Value, String), String> {
    let mut spec: serde_json::Value = serde_json::from_slice(raw).map_err(|e| format!("config.json: {e}"))?;
    if !spec.is_object() {
        return Err("config.json: not a JSON object".into());
    }
    let root = spec.pointer("/root/path").and_then(|v| v.as_str()).unwrap_or("rootfs").to_string();
    let mounts_cgroups = spec.get("mounts").and_then(|m| m.as_array()).is_some_and(|m| {
        m.iter().any(|m| matches!(m.get("type").and_then(|t| t.as_str()), Some("cgroup" | "cgroup2")))
    });
    if let Some(linux) = spec.get_mut("linux").and_then(|l| l.as_object_mut()) {
        if linux.remove("seccomp").is_some() {
            log::warn!("seccomp profiles are not applied inside the guest yet; the VM is the boundary");
        }
        // The guest has cgroup v2: a container that mounts its cgroups sees
        // its own cgroup there (as runc shows it on a v1 host) only from a
        // cgroup namespace, so it gets one.
        if let Some(list) = linux.get_mut("namespaces").and_then(|n| n.as_array_mut()) {
            let has_cgroupns = list.iter().any(|n| n.get("type").and_then(|t| t.as_str()) == Some("cgroup"));
            if mounts_cgroups && !has_cgroupns {
                list.push(serde_json::json!({"type": "cgroup"}));
            }
        }
    }
    // Everything the agent would refuse in what it gets, refused here:
    // before a VM boots or anything is mounted for it.
    let adapted = serde_json::to_vec(&spec).map_err(|e| format!("config.json: {e}"))?;
    kata_like_protocol::checks::oci_spec(&adapted).map_err(|e| format!("config.json: {e}"))?;
    Ok((spec, root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_mounting_its_cgroups_gets_a_cgroup_namespace() {
        let raw = br#"{"mounts":[{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup"}],
                       "linux":{"namespaces":[{"type":"mount"}],"seccomp":{}}}"#;
        let (spec, root) = guest_spec(raw).expect("ok");
        assert_eq!(root, "rootfs");
        assert_eq!(spec["linux"]["namespaces"], serde_json::json!([{"type": "mount"}, {"type": "cgroup"}]));
        assert!(spec["linux"].get("seccomp").is_none());
        let (plain, _) = guest_spec(br#"{"linux":{"namespaces":[{"type":"mount"}]}}"#).expect("ok");
        assert_eq!(plain["linux"]["namespaces"], serde_json::json!([{"type": "mount"}]));
        assert!(guest_spec(b"[1]").unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn long_sandbox_ids_get_short_distinct_state_directories() {
        assert_eq!(state_dir_name("short-id"), "short-id");
        let a = "98095ae7a4f84f2beddc77da9ffbeb398769087981d2078169257b84ed2691de";
        let b = "98095ae7a4f84f2beddc77da9ffbeb398769087981d2078169257b84ed2691df";
        assert_eq!(state_dir_name(a).len(), 29);
        assert!(state_dir_name(a).starts_with("98095ae7a4f8-"));
        assert_ne!(state_dir_name(a), state_dir_name(b));
        assert_eq!(state_dir_name(a), state_dir_name(a), "stable");
    }

    #[test]
    fn a_state_root_too_long_for_sockets_is_refused_up_front() {
        let config =
            RuntimeConfig { state_root: PathBuf::from(format!("/tmp/{}", "x".repeat(100))), ..Default::default() };
        let err = Sandbox::prepare(&config, "id").unwrap_err();
        assert!(err.contains("Unix sockets allow 107"), "{err}");
    }
}
