//! A container's OCI bundle as the core takes it: the guest's copy of the
//! spec (what the guest cannot honour dropped or refused before anything
//! starts), where its rootfs is, its pod role and network namespace, and
//! the VM it asks for. Both front ends read a bundle through
//! [`ContainerSpec::read`].

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::CoreError;
use super::pod;
use super::BootOptions;
use crate::config::RuntimeConfig;

/// A container's spec, ready for the guest.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    /// The guest's copy of `config.json` (namespaces adapted to the pod).
    pub spec: Value,
    /// `root.path` as the bundle gives it.
    pub root_path: String,
    /// The host network namespace the container names (a CNI netns): the
    /// pod's NIC is attached from there.
    pub netns: Option<PathBuf>,
    /// `process.terminal`.
    pub terminal: bool,
    /// Its role in a pod.
    pub kind: pod::Kind,
}

impl ContainerSpec {
    /// Reads and checks `bundle/config.json`.
    pub fn read(bundle: &Path) -> Result<ContainerSpec, CoreError> {
        let path = bundle.join("config.json");
        let raw = std::fs::read(&path).map_err(|e| CoreError::Invalid(format!("{}: {e}", path.display())))?;
        ContainerSpec::parse(&raw).map_err(|e| CoreError::Invalid(format!("{}/{e}", bundle.display())))
    }

    /// Parses `config.json` bytes; errors start with `config.json`.
    pub fn parse(raw: &[u8]) -> Result<ContainerSpec, String> {
        let (mut spec, root_path) = guest_spec(raw)?;
        let kind = pod::kind(&spec);
        let netns = pod::network_namespace(&spec);
        pod::adapt_namespaces(&mut spec).map_err(|e| format!("config.json: {e}"))?;
        let terminal = spec.pointer("/process/terminal").and_then(Value::as_bool).unwrap_or(false);
        Ok(ContainerSpec { spec, root_path, netns, terminal, kind })
    }

    /// The rootfs directory of a prepared bundle (`root.path`, relative to
    /// the bundle unless absolute).
    pub fn rootfs_in(&self, bundle: &Path) -> PathBuf {
        let root = Path::new(&self.root_path);
        if root.is_absolute() {
            root.to_path_buf()
        } else {
            bundle.join(root)
        }
    }

    /// The spec's annotations.
    pub fn annotations(&self) -> std::collections::HashMap<String, String> {
        self.spec.get("annotations").and_then(|a| serde_json::from_value(a.clone()).ok()).unwrap_or_default()
    }

    /// The VM this container asks for when it is the one that boots its
    /// sandbox: size (pod annotations within the config's limits), the pod
    /// network, hostname and host cgroup.
    pub fn boot_options(&self, config: &RuntimeConfig) -> Result<BootOptions, CoreError> {
        let (vcpus, memory_mib) = pod::vm_size(config, &self.spec).map_err(CoreError::Invalid)?;
        Ok(self.boot_options_sized(vcpus, memory_mib))
    }

    /// As [`Self::boot_options`], with the VM's size given (the standalone
    /// CLI's VMs have the configuration's size: pod-size annotations are
    /// the CRI plugin's).
    pub fn boot_options_sized(&self, vcpus: u8, memory_mib: u32) -> BootOptions {
        BootOptions {
            vcpus,
            memory_mib,
            netns: self.netns.clone(),
            setup: pod::setup_request(&self.spec),
            cgroups_path: pod::cgroups_path(&self.spec),
            boot_slots: None,
            pod_sysctls: if self.kind == pod::Kind::Sandbox { pod::sysctls(&self.spec) } else { Default::default() },
        }
    }
}

/// The guest's copy of an OCI spec (`config.json` bytes) and its root path:
/// what the guest cannot honour is dropped with a log line rather than
/// failing the container.
fn guest_spec(raw: &[u8]) -> Result<(serde_json::Value, String), String> {
    let mut spec: serde_json::Value = serde_json::from_slice(raw).map_err(|e| format!("config.json: {e}"))?;
    if !spec.is_object() {
        return Err("config.json: not a JSON object".into());
    }
    // A pod sharing the host's namespaces is refused by its Kubernetes
    // option before anything else (its spec fails other checks too, e.g. a
    // hostname without a UTS namespace for hostNetwork).
    if pod::kind(&spec) == pod::Kind::Sandbox {
        pod::refuse_host_namespaces(&spec)?;
    }
    let root = spec.pointer("/root/path").and_then(|v| v.as_str()).unwrap_or("rootfs").to_string();
    let mounts_cgroups = spec.get("mounts").and_then(|m| m.as_array()).is_some_and(|m| {
        m.iter().any(|m| matches!(m.get("type").and_then(|t| t.as_str()), Some("cgroup" | "cgroup2")))
    });
    if let Some(linux) = spec.get_mut("linux").and_then(|l| l.as_object_mut()) {
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
    pod::check_sysctls(&spec)?;
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
                       "linux":{"namespaces":[{"type":"mount"}],"seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}}}"#;
        let (spec, root) = guest_spec(raw).expect("ok");
        assert_eq!(root, "rootfs");
        assert_eq!(spec["linux"]["namespaces"], serde_json::json!([{"type": "mount"}, {"type": "cgroup"}]));
        assert!(spec["linux"].get("seccomp").is_some(), "the guest applies seccomp profiles");
        let (plain, _) = guest_spec(br#"{"linux":{"namespaces":[{"type":"mount"}]}}"#).expect("ok");
        assert_eq!(plain["linux"]["namespaces"], serde_json::json!([{"type": "mount"}]));
        assert!(guest_spec(b"[1]").unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn a_bundle_is_read_with_its_terminal_root_and_role() {
        let dir = tempfile::tempdir().expect("tmp");
        let err = ContainerSpec::read(dir.path()).unwrap_err();
        assert!(matches!(&err, CoreError::Invalid(m) if m.contains("config.json")), "{err}");
        std::fs::write(dir.path().join("config.json"), r#"{"ociVersion":"1.0.2","process":{"terminal":true,"user":{"uid":0,"gid":0},"cwd":"/","args":["sh"]},"root":{"path":"r"}}"#)
            .expect("write");
        let spec = ContainerSpec::read(dir.path()).expect("reads");
        assert!(spec.terminal);
        assert_eq!(spec.rootfs_in(dir.path()), dir.path().join("r"));
        assert_eq!(spec.kind, pod::Kind::Plain);
        assert!(spec.netns.is_none());
        std::fs::write(dir.path().join("config.json"), "{not json").expect("write");
        let err = ContainerSpec::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
    }
}
