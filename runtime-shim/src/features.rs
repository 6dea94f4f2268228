//! The OCI runtime features document (runtime-spec `features.md`) of what
//! a kata-like sandbox implements: containerd ≥ 2.2 reads it from the
//! shim's `-info`; the runc-compatible CLI's `features` prints it.
//!
//! Only what the guest agent does is listed; anything a VM cannot have
//! (host namespaces, AppArmor/SELinux labels on the host) is left out.

use serde_json::{json, Value};

/// The newest runtime-spec version whose configs we take.
pub const OCI_VERSION_MAX: &str = "1.1.0";

/// Mount types a container's spec may use inside the guest; host paths
/// must be bind mounts (shared over virtio-fs).
pub const MOUNT_TYPES: &[&str] = &["bind", "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2"];

/// Which front end answers: the runc-compatible CLI runs the spec's hooks
/// (on the host); the containerd shim does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frontend {
    /// `containerd-shim-kata-like-v2 -info`.
    Shim,
    /// `kata-like features`.
    Cli,
}

/// The features document.
pub fn features(frontend: Frontend) -> Value {
    let hooks: &[&str] = match frontend {
        Frontend::Shim => &[],
        Frontend::Cli => &["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
    };
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION_MAX,
        "hooks": hooks,
        "mountOptions": [
            "bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec", "relatime", "strictatime",
            "private", "rprivate", "shared", "rshared", "slave", "rslave", "mode", "size"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "uts"],
            "cgroup": { "v1": false, "v2": true, "systemd": true, "systemdUser": false },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false }
        },
        "annotations": {
            "io.kata-like.isolation": "microvm",
            "io.kata-like.mount-types": MOUNT_TYPES.join(","),
            "io.kata-like.rootfs-mount-types": "overlay,bind"
        }
    })
}
