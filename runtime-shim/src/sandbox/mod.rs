//! The sandbox core: one pod's (or one standalone container's) microVM
//! and what lives in it, under every front end. The containerd adapter
//! (`crate::shim`), the CLI (`crate::standalone`) and the coming
//! runc-compatible CLI sit on top of it; it never imports them.
//!
//! A [`Sandbox`] is the running VM (its host processes are `crate::vm`),
//! its state directory `<state_root>/<sandbox id>` (vsock socket, logs:
//! vmm.log, console.log with the agent's log, virtiofsd.log) and the
//! shared directory containers' rootfs are bound into.
//!
//! * [`spec`]: a bundle's spec as the guest gets it ([`ContainerSpec`]).
//! * [`container`]: one operation per container lifecycle step
//!   ([`Sandbox::add_container`], exec, start, wait, remove).
//! * [`task`]: the task lifecycle (created → running ⇄ paused → stopped).
//! * [`error`]: the core's one error type ([`CoreError`]).
//! * [`io`]: stdio between the front end's streams and the guest.
//! * [`rootfs`], [`volumes`]: what is shared with the guest over virtio-fs.
//! * [`pod`]: CRI pods (sandbox container, namespaces, VM size).
//! * [`template`], [`boot_slots`]: VM templates, the host's boot queue.

pub mod boot_slots;
pub mod container;
pub mod error;
pub mod guest;
pub mod io;
pub mod pod;
pub mod rootfs;
pub mod spec;
pub mod task;
pub mod template;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kata_like_protocol::agent::{ContainerRequest, SetupSandboxRequest};
use kata_like_protocol::AgentClient;

pub use self::error::CoreError;
pub use self::guest::GuestLink;
pub use self::spec::ContainerSpec;
pub use self::task::{Exit, Lifecycle, TaskStatus};
use crate::config::RuntimeConfig;
use crate::vm::{NetDevice, SandboxVm, VmSpec};

/// The virtio-fs tag of the shared directory.
pub use crate::vm::SHARED_TAG;

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    vm: Mutex<Option<SandboxVm>>,
    link: GuestLink,
    state: PathBuf,
    shared: PathBuf,
    /// The pod NIC's tap (kept until the sandbox is destroyed).
    network: Mutex<Option<NetDevice>>,
    /// See [`BootOptions::pod_sysctls`].
    pod_sysctls: serde_json::Map<String, serde_json::Value>,
}

/// How a sandbox's VM differs from the runtime config's defaults.
#[derive(Debug)]
pub struct BootOptions {
    /// vCPUs.
    pub vcpus: u8,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// The pod's network namespace: its CNI interface is moved onto a
    /// virtio-net NIC of the guest.
    pub netns: Option<PathBuf>,
    /// The SetupSandbox request to send (hostname); entropy, clock and
    /// shared file system are filled in here.
    pub setup: SetupSandboxRequest,
    /// The first container's `linux.cgroupsPath`: the host cgroup of the
    /// VMM and virtiofsd (`crate::vm::cgroup`).
    pub cgroups_path: String,
    /// Where the host's boot slots are ([`crate::sandbox::boot_slots`]); default
    /// `<state_root>/boot-slots`.
    pub boot_slots: Option<PathBuf>,
    /// The pod's sysctls, for each of its containers ([`pod::merge_pod_sysctls`]).
    pub pod_sysctls: serde_json::Map<String, serde_json::Value>,
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
    crate::vm::host_entropy(n).unwrap_or_else(|e| {
        log::warn!("no host entropy for the guest: {e}");
        vec![0u8; n]
    })
}

impl Sandbox {
    /// Starts sandbox `name`'s VM under `config` as `opts` says, in state
    /// directory `<state_root>/<name>`; with `bundle`, notes the state
    /// directory there for [`cleanup_after_crash`]. On failure nothing of
    /// the sandbox is left (KATA_LIKE_KEEP_STATE keeps its logs).
    pub fn start(
        config: &RuntimeConfig,
        name: &str,
        opts: BootOptions,
        bundle: Option<&Path>,
    ) -> Result<Sandbox, CoreError> {
        // The marker first: a shim that dies from here on leaves a state
        // directory that cleanup_after_crash finds.
        if let Some(bundle) = bundle {
            let state = config.state_root.join(state_dir_name(name));
            let _ = std::fs::write(bundle.join(STATE_LINK), state.display().to_string());
        }
        let (state, shared) = Sandbox::prepare(config, name).map_err(CoreError::Failed)?;
        Sandbox::boot(config, state.clone(), shared.clone(), opts).map_err(|e| {
            rootfs::remove_dir_mounts(&shared);
            if std::env::var_os("KATA_LIKE_KEEP_STATE").is_none() {
                rootfs::remove_tree(&state);
            }
            CoreError::Unavailable(format!("cannot start the sandbox VM: {e}"))
        })
    }

    /// Prepares the state directory `<state_root>/<id>` and its shared
    /// directory.
    fn prepare(config: &RuntimeConfig, id: &str) -> Result<(PathBuf, PathBuf), String> {
        let state = config.state_root.join(state_dir_name(id));
        crate::vm::virtiofsd::check_socket_path(&state.join("virtiofsd.sock"))?;
        let shared = state.join("shared");
        rootfs::make_shared_dir(&shared)?;
        Ok((state, shared))
    }

    /// Boots the VM sharing `shared` and sets up the guest.
    fn boot(config: &RuntimeConfig, state: PathBuf, shared: PathBuf, opts: BootOptions) -> Result<Sandbox, String> {
        let pod_network = match &opts.netns {
            Some(path) => Some(crate::network::attach(path).map_err(|e| e.to_string())?),
            None => None,
        };
        let mut forward = None;
        let network = pod_network.map(|mut pod| {
            forward = pod.forward.take();
            let request = pod.guest_request();
            let device =
                NetDevice { tap: std::sync::Arc::new(pod.tap), mac: pod.interface.mac.clone(), mtu: pod.interface.mtu };
            (device, request)
        });
        // Held until the guest is set up: booting is the CPU-bound phase.
        let slots_dir = opts.boot_slots.unwrap_or_else(|| config.state_root.join(boot_slots::DIR));
        let slot = boot_slots::acquire(&slots_dir, config.max_concurrent_boots(), config.boot_queue_timeout())
            .map_err(|e| e.to_string())?;
        // Every sandbox gets a host cgroup: the spec's, else one of ours
        // (`ctr run` and runc-style bundles may name none).
        let cgroups_path = match opts.cgroups_path.as_str() {
            "" => format!("/kata-like/{}", state.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
            named => named.to_string(),
        };
        let cgroup = crate::vm::cgroup::HostCgroup::create(&cgroups_path)?.map(std::sync::Arc::new);
        // For the clean-up after a shim that dies (cleanup_after_crash).
        let _ = std::fs::write(state.join(CGROUP_NOTE), &cgroups_path);
        let mut spec = VmSpec::for_sandbox(config, opts.vcpus, opts.memory_mib, state.clone(), shared.clone());
        spec.net = network.as_ref().map(|(device, _)| device.clone());
        spec.cgroup = cgroup;
        let begin = std::time::Instant::now();
        let (vm, restored) = start_vm(config, &mut spec)?;
        let booted_us = begin.elapsed().as_micros() as u64;
        let uds = vm.vsock_path();
        // The connection the boot check made, with the configured bound.
        let client = vm.agent().with_rpc_timeout(config.rpc_timeout());
        let mut req = opts.setup;
        req.entropy = random_bytes(256);
        req.realtime_ns = crate::vm::realtime_ns();
        req.shared_fs_tag = SHARED_TAG.into();
        client.setup_sandbox(&req).map_err(|e| format!("guest set-up failed: {}", e.message()))?;
        if let Some((_, net_req)) = &network {
            let mut net_req = net_req.clone();
            if restored {
                // The restored NIC is the template's slot: found by the
                // slot's MAC, it takes the pod's.
                for iface in &mut net_req.interfaces {
                    iface.new_mac = std::mem::replace(&mut iface.mac, template::NIC_MAC.into());
                }
            }
            client.configure_network(&net_req).map_err(|e| format!("guest network set-up failed: {}", e.message()))?;
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
            link: GuestLink::new(client, uds, config.rpc_timeout()),
            state,
            shared,
            network: Mutex::new(network.map(|(device, _)| device)),
            pod_sysctls: opts.pod_sysctls,
        })
    }

    /// The link to the guest agent.
    pub fn link(&self) -> &GuestLink {
        &self.link
    }

    /// The sandbox's state directory (sockets, logs, the shared directory).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The agent client (bounded RPCs).
    pub fn client(&self) -> &AgentClient {
        self.link.client()
    }

    /// A fresh connection for a long poll (one per waiter, so waits never
    /// queue behind each other in the agent's per-connection thread pool).
    pub fn long_poll_client(&self) -> Result<AgentClient, CoreError> {
        self.link.long_poll_client()
    }

    /// The VMM's vsock socket.
    pub fn uds(&self) -> &Path {
        self.link.uds()
    }

    /// The shared directory.
    pub fn shared(&self) -> &Path {
        &self.shared
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
        crate::vm::console_excerpt(&crate::vm::console_path(&self.state), 10)
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

/// Starts the VM of `spec`: restored from the template of its shape when
/// templates are on (built first if there is none), else, or when the
/// template cannot be used, booted cold. Returns the VM and whether it was
/// restored.
fn start_vm(config: &RuntimeConfig, spec: &mut VmSpec) -> Result<(SandboxVm, bool), String> {
    if config.vm_templates {
        let shape = template::Shape::for_vm(spec.vcpus, spec.memory_mib, spec.net.as_ref().map(|net| net.mtu));
        match template::usable(config, &shape) {
            Ok(dir) => spec.restore_from = Some(dir),
            Err(e) => log::warn!("no VM template ({e}); booting cold"),
        }
    }
    match (SandboxVm::start(spec), spec.restore_from.take()) {
        (Ok(vm), Some(dir)) => {
            log::info!("sandbox VM restored from template {}", dir.display());
            Ok((vm, true))
        }
        (Ok(vm), None) => Ok((vm, false)),
        (Err(e), Some(dir)) if !e.interrupted() => {
            // Cold boot is always correct: the template may be corrupt or
            // from another VMM build the key did not catch. (A VMM killed
            // during the restore says nothing about the template: that
            // error goes to the caller.)
            log::warn!("restoring template {} failed ({e}); discarding it and booting cold", dir.display());
            template::discard(&dir);
            Ok((SandboxVm::start(spec).map_err(|e| e.to_string())?, false))
        }
        (Err(e), _) => Err(e.to_string()),
    }
}

/// After a shim crash: unmount and remove the state a dead shim left.
pub fn cleanup_after_crash(id: &str, bundle: &Path) {
    if let Ok(state) = std::fs::read_to_string(bundle.join(STATE_LINK)) {
        remove_leftover_state(Path::new(state.trim()));
    }
    let _ = nix::mount::umount2(&bundle.join("rootfs"), nix::mount::MntFlags::MNT_DETACH);
    log::info!("cleaned up after shim of {id}");
}

/// Removes what a sandbox whose owner died left in its state directory
/// `state`: the shared directory's mounts, its host cgroup (the VMM and
/// virtiofsd died with their owner, PDEATHSIG, so it is empty or about to
/// be) and the directory. Nothing there is a no-op.
pub fn remove_leftover_state(state: &Path) {
    if !state.exists() {
        return;
    }
    rootfs::remove_dir_mounts(&state.join("shared"));
    if let Ok(path) = std::fs::read_to_string(state.join(CGROUP_NOTE)) {
        crate::vm::cgroup::remove_leftover(&path);
    }
    rootfs::remove_tree(state);
}

/// A request naming container `id`.
pub fn container_req(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.to_string();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

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
