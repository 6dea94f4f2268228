//! Kubernetes pods (containerd's CRI plugin) in one VM.
//!
//! CRI creates a pod as a *sandbox* container (the pause image) and then
//! the pod's containers, all with `io.kubernetes.cri.sandbox-id` naming the
//! sandbox, so they reach this one shim (the containerd adapter groups them by it). The
//! sandbox container boots the VM and is otherwise virtual: nothing runs for
//! it in the guest (the VM itself holds the pod's namespaces), its pid is
//! the VMM's and it exits when it is killed or when the VM dies.
//!
//! The containers' specs name the sandbox's namespaces by host paths
//! (`/proc/<pid>/ns/net`, the CNI netns). Inside the VM the pod's network,
//! IPC and UTS namespaces are the guest's own root namespaces (the agent
//! configures the NIC and hostname there), so such entries are dropped
//! from the guest's spec; see [`adapt_namespaces`].

use kata_like_protocol::agent::SetupSandboxRequest;
use serde_json::Value;

use crate::config::{RuntimeConfig, VM_MEMORY_ANNOTATION, VM_VCPUS_ANNOTATION};

/// CRI's annotation of a container's role: `sandbox` or `container`.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// The pod's memory limit in bytes (containerd ≥ 1.7 sets it).
pub const SANDBOX_MEMORY_ANNOTATION: &str = "io.kubernetes.cri.sandbox-memory";
/// The pod's CPU quota and period (containerd ≥ 1.7).
pub const SANDBOX_CPU_QUOTA_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// See [`SANDBOX_CPU_QUOTA_ANNOTATION`].
pub const SANDBOX_CPU_PERIOD_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-period";

/// What a container is to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// CRI's sandbox (pause) container: the VM itself.
    Sandbox,
    /// A CRI container of a pod.
    PodContainer,
    /// A container created without CRI (`ctr run`).
    Plain,
}

fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    spec.get("annotations")?.get(key)?.as_str()
}

/// The container's role from its spec's annotations.
pub fn kind(spec: &Value) -> Kind {
    match annotation(spec, CONTAINER_TYPE_ANNOTATION) {
        Some("sandbox") => Kind::Sandbox,
        Some(_) => Kind::PodContainer,
        None => Kind::Plain,
    }
}

fn namespaces(spec: &Value) -> impl Iterator<Item = &Value> {
    spec.pointer("/linux/namespaces").and_then(Value::as_array).into_iter().flatten()
}

/// The host network namespace the spec joins (CRI's CNI netns, or
/// `ctr run --with-ns network:…`), which becomes the VM's network.
pub fn network_namespace(spec: &Value) -> Option<std::path::PathBuf> {
    namespaces(spec)
        .find(|n| n.get("type").and_then(Value::as_str) == Some("network"))
        .and_then(|n| n.get("path")?.as_str())
        .filter(|p| !p.is_empty())
        .map(std::path::PathBuf::from)
}

/// Rewrites namespace entries that name host namespaces by path: network,
/// IPC and UTS ones are dropped (the process joins the guest's root ones,
/// which are the pod's); a PID namespace path (shareProcessNamespace)
/// becomes the pod's PID namespace in the guest; other paths are refused.
pub fn adapt_namespaces(spec: &mut Value) -> Result<(), String> {
    let Some(list) = spec.pointer_mut("/linux/namespaces").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let mut kept = Vec::with_capacity(list.len());
    for mut ns in list.drain(..) {
        let ty = ns.get("type").and_then(Value::as_str).unwrap_or_default().to_string();
        let has_path = ns.get("path").and_then(Value::as_str).is_some_and(|p| !p.is_empty());
        if !has_path {
            kept.push(ns);
            continue;
        }
        match ty.as_str() {
            "network" | "ipc" | "uts" => {}
            "pid" => {
                // The pod's shared PID namespace (shareProcessNamespace):
                // the agent keeps one per VM, with a PID 1 of its own.
                ns["path"] = Value::String(kata_like_protocol::GUEST_POD_PID_NS.into());
                kept.push(ns);
            }
            other => {
                return Err(format!(
                    "linux.namespaces: joining a host {other} namespace by path cannot work inside the VM"
                ));
            }
        }
    }
    *list = kept;
    Ok(())
}

/// A pod sandbox's spec must give the pod its own network, PID and IPC
/// namespaces: containerd leaves one out for hostNetwork, hostPID and
/// hostIPC, which a VM cannot share with the host. Refused by name, so
/// kubelet reports it rather than running a pod that would not see what
/// it asked for.
pub fn refuse_host_namespaces(spec: &Value) -> Result<(), String> {
    let has = |ty: &str| namespaces(spec).any(|n| n.get("type").and_then(Value::as_str) == Some(ty));
    let missing: Vec<&str> = [("network", "hostNetwork"), ("pid", "hostPID"), ("ipc", "hostIPC")]
        .into_iter()
        .filter(|(ty, _)| !has(ty))
        .map(|(_, option)| option)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} {} not supported by kata-like: a pod runs in its own VM and cannot share the host's namespaces \
         (use another RuntimeClass for such pods)",
        missing.join(", "),
        if missing.len() == 1 { "is" } else { "are" }
    ))
}

/// The pod's sysctls (`linux.sysctl` of the sandbox spec: containerd 1.6
/// sets them there only), which every container of the pod gets under its
/// own, as they apply to the pod's shared namespaces.
pub fn merge_pod_sysctls(spec: &mut Value, pod: &serde_json::Map<String, Value>) {
    if pod.is_empty() {
        return;
    }
    let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) else { return };
    let sysctl = linux.entry("sysctl").or_insert_with(|| Value::Object(Default::default()));
    if let Some(own) = sysctl.as_object_mut() {
        for (key, value) in pod {
            own.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
}

/// Refuses sysctls that are not in a namespace of the container's own, by
/// name, with runc's rules: IPC ones need an IPC namespace, `net.*` a
/// network namespace, `kernel.domainname` a UTS namespace;
/// `kernel.hostname` conflicts with the spec's hostname; everything else
/// is host-wide (the guest's, here: shared by every pod container).
pub fn check_sysctls(spec: &Value) -> Result<(), String> {
    const IPC: [&str; 8] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let has = |ty: &str| namespaces(spec).any(|n| n.get("type").and_then(Value::as_str) == Some(ty));
    for key in sysctls(spec).keys() {
        let name = key.replace('/', ".");
        let needs = if IPC.contains(&name.as_str()) || name.starts_with("fs.mqueue.") {
            "ipc"
        } else if name.starts_with("net.") {
            "network"
        } else if name == "kernel.domainname" {
            "uts"
        } else if name == "kernel.hostname" {
            return Err(format!("linux.sysctl: {key:?} conflicts with the OCI \"hostname\" field"));
        } else {
            return Err(format!("linux.sysctl: {key:?} is not in a separate kernel namespace"));
        };
        if !has(needs) {
            return Err(format!("linux.sysctl: {key:?} needs a {needs} namespace of the container's own"));
        }
    }
    Ok(())
}

/// The spec's `linux.sysctl` as a map.
pub fn sysctls(spec: &Value) -> serde_json::Map<String, Value> {
    spec.pointer("/linux/sysctl").and_then(Value::as_object).cloned().unwrap_or_default()
}

/// The spec's `linux.cgroupsPath` ("" when unset): the VM's host cgroup.
pub fn cgroups_path(spec: &Value) -> String {
    spec.pointer("/linux/cgroupsPath").and_then(Value::as_str).unwrap_or_default().to_string()
}

/// The guest set-up a sandbox spec asks for beyond the defaults.
pub fn setup_request(spec: &Value) -> SetupSandboxRequest {
    let mut req = SetupSandboxRequest::new();
    req.hostname = spec.get("hostname").and_then(Value::as_str).unwrap_or_default().to_string();
    req
}

fn parse_annotation<T: std::str::FromStr>(spec: &Value, key: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    annotation(spec, key).map(|v| v.parse::<T>().map_err(|e| format!("annotation {key}={v:?}: {e}"))).transpose()
}

/// The VM's size for a sandbox spec: the pod's resources (when containerd
/// passes them) plus the configured overhead, else the configured default;
/// then our annotations where the config allows them; within the maximum.
pub fn vm_size(config: &RuntimeConfig, spec: &Value) -> Result<(u8, u32), String> {
    let mut memory = config.memory_mib;
    let mut vcpus = config.vcpus;
    if let Some(bytes) = parse_annotation::<u64>(spec, SANDBOX_MEMORY_ANNOTATION)?.filter(|b| *b > 0) {
        let pod = u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX);
        memory = pod.saturating_add(config.memory_overhead_mib);
    }
    let quota = parse_annotation::<i64>(spec, SANDBOX_CPU_QUOTA_ANNOTATION)?.filter(|q| *q > 0);
    let period = parse_annotation::<u64>(spec, SANDBOX_CPU_PERIOD_ANNOTATION)?.filter(|p| *p > 0);
    if let (Some(quota), Some(period)) = (quota, period) {
        let cpus = (quota as u64).div_ceil(period);
        vcpus = u8::try_from(cpus).unwrap_or(u8::MAX).max(1);
    }
    if let Some(m) = allowed::<u32>(config, spec, VM_MEMORY_ANNOTATION)? {
        memory = m;
    }
    if let Some(v) = allowed::<u8>(config, spec, VM_VCPUS_ANNOTATION)? {
        vcpus = v;
    }
    if memory > config.max_memory_mib || u32::from(vcpus) > u32::from(config.max_vcpus) {
        return Err(format!(
            "the pod needs {vcpus} vCPUs and {memory} MiB; the runtime config allows at most {} vCPUs and {} MiB",
            config.max_vcpus, config.max_memory_mib
        ));
    }
    if memory < 64 {
        return Err(format!("the pod's VM would get {memory} MiB; at least 64 MiB are needed"));
    }
    Ok((vcpus.max(1), memory))
}

/// One of our annotations, if present, refused unless the config enables it.
fn allowed<T: std::str::FromStr>(config: &RuntimeConfig, spec: &Value, key: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    if annotation(spec, key).is_some() && !config.enable_annotations.iter().any(|a| a == key) {
        return Err(format!("annotation {key} is not enabled in the runtime config (enable_annotations)"));
    }
    parse_annotation(spec, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_type_annotation_decides_the_kind() {
        let s = |t: &str| json!({"annotations": {CONTAINER_TYPE_ANNOTATION: t}});
        assert_eq!(kind(&s("sandbox")), Kind::Sandbox);
        assert_eq!(kind(&s("container")), Kind::PodContainer);
        assert_eq!(kind(&json!({})), Kind::Plain);
    }

    #[test]
    fn host_namespace_paths_are_mapped_to_the_guests_own() {
        let mut spec = json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "mount"},
            {"type": "network", "path": "/proc/42/ns/net"},
            {"type": "ipc", "path": "/proc/42/ns/ipc"},
            {"type": "uts", "path": "/proc/42/ns/uts"},
            {"type": "pid", "path": "/proc/42/ns/pid"},
        ]}});
        assert_eq!(network_namespace(&spec).as_deref(), Some(std::path::Path::new("/proc/42/ns/net")));
        adapt_namespaces(&mut spec).expect("ok");
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "mount"}, {"type": "pid", "path": kata_like_protocol::GUEST_POD_PID_NS}])
        );
        assert_eq!(network_namespace(&spec), None);

        let mut user = json!({"linux": {"namespaces": [{"type": "user", "path": "/proc/1/ns/user"}]}});
        let err = adapt_namespaces(&mut user).unwrap_err();
        assert!(err.contains("host user namespace"), "{err}");
    }

    #[test]
    fn host_namespaces_are_refused_by_their_kubernetes_name() {
        let ns = |types: &[&str]| json!({"linux": {"namespaces": types.iter().map(|t| json!({"type": t})).collect::<Vec<_>>()}});
        refuse_host_namespaces(&ns(&["pid", "ipc", "uts", "mount", "network"])).expect("a pod of its own");
        let err = refuse_host_namespaces(&ns(&["pid", "ipc", "uts", "mount"])).unwrap_err();
        assert!(err.starts_with("hostNetwork is not supported"), "{err}");
        let err = refuse_host_namespaces(&ns(&["mount", "network"])).unwrap_err();
        assert!(err.starts_with("hostPID, hostIPC are not supported"), "{err}");
    }

    #[test]
    fn sysctls_outside_the_containers_namespaces_are_refused_by_name() {
        let spec = |ns: &[&str], key: &str| {
            json!({"linux": {"namespaces": ns.iter().map(|t| json!({"type": t})).collect::<Vec<_>>(),
                             "sysctl": {key: "1"}}})
        };
        check_sysctls(&spec(&["ipc"], "kernel.shm_rmid_forced")).expect("ipc");
        check_sysctls(&spec(&["ipc"], "fs.mqueue.msg_max")).expect("mqueue");
        check_sysctls(&spec(&["network"], "net.ipv4.ip_unprivileged_port_start")).expect("net");
        let err = check_sysctls(&spec(&["ipc"], "net.ipv4.ip_forward")).unwrap_err();
        assert!(err.contains("\"net.ipv4.ip_forward\" needs a network namespace"), "{err}");
        let err = check_sysctls(&spec(&["ipc", "network", "uts"], "kernel.pid_max")).unwrap_err();
        assert!(err.contains("\"kernel.pid_max\" is not in a separate kernel namespace"), "{err}");
        let err = check_sysctls(&spec(&["uts"], "kernel.hostname")).unwrap_err();
        assert!(err.contains("hostname"), "{err}");
    }

    #[test]
    fn pod_sysctls_are_added_under_the_containers_own() {
        let mut spec = json!({"linux": {"sysctl": {"net.ipv4.ip_forward": "0"}}});
        let pod = sysctls(&json!({"linux": {"sysctl": {"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"}}}));
        merge_pod_sysctls(&mut spec, &pod);
        assert_eq!(spec["linux"]["sysctl"], json!({"net.ipv4.ip_forward": "0", "kernel.shm_rmid_forced": "1"}));
        let mut bare = json!({"linux": {}});
        merge_pod_sysctls(&mut bare, &pod);
        assert_eq!(bare["linux"]["sysctl"]["kernel.shm_rmid_forced"], "1");
    }

    #[test]
    fn the_vm_is_sized_from_pod_resources_and_allowed_annotations() {
        let mut config = RuntimeConfig { memory_mib: 256, vcpus: 1, memory_overhead_mib: 64, ..Default::default() };
        assert_eq!(vm_size(&config, &json!({})).expect("ok"), (1, 256));
        let pod = json!({"annotations": {
            SANDBOX_MEMORY_ANNOTATION: "536870912",
            SANDBOX_CPU_QUOTA_ANNOTATION: "150000",
            SANDBOX_CPU_PERIOD_ANNOTATION: "100000",
        }});
        assert_eq!(vm_size(&config, &pod).expect("ok"), (2, 512 + 64));

        let ours = json!({"annotations": {VM_MEMORY_ANNOTATION: "384"}});
        let err = vm_size(&config, &ours).unwrap_err();
        assert!(err.contains("not enabled") && err.contains(VM_MEMORY_ANNOTATION), "{err}");
        config.enable_annotations = vec![VM_MEMORY_ANNOTATION.into()];
        assert_eq!(vm_size(&config, &ours).expect("ok"), (1, 384));

        let bad = json!({"annotations": {VM_MEMORY_ANNOTATION: "lots"}});
        assert!(vm_size(&config, &bad).unwrap_err().contains("lots"));
        let huge = json!({"annotations": {VM_MEMORY_ANNOTATION: "999999"}});
        assert!(vm_size(&config, &huge).unwrap_err().contains("at most"));
    }
}
