//! The kata-like agent API, shared by everything that talks to the in-guest
//! agent (the shim, the `kata-like` CLI, the tests) and by the agent itself.
//!
//! * [`agent`], [`agent_ttrpc`]: messages and ttrpc stubs generated from
//!   `protos/agent.proto`.
//! * [`hybrid_vsock`]: the host side of Firecracker's hybrid vsock handshake.
//! * [`checks`]: what the agent accepts (OCI specs, request payloads),
//!   checked the same way by the host before it asks and by the agent.
//! * [`AgentClient`]: a blocking client over hybrid vsock.
//! * Constants of the guest ABI that the VMM, the agent and the host agree on.

pub mod checks;
mod client;
pub mod echo;
pub mod hybrid_vsock;

pub use client::{AgentClient, AgentClientError};

/// Generated protobuf messages.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::unwrap_used,
    clippy::undocumented_unsafe_blocks,
    unused_attributes,
    unused_mut,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    trivial_casts,
    dead_code
)]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// containerd's cgroup v2 metrics messages (for the shim's Stats).
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
pub mod cgroups_v2 {
    include!(concat!(env!("OUT_DIR"), "/cgroups_v2.rs"));
}

/// The ttrpc version the agent API uses.
pub use ttrpc;

/// Generated ttrpc client and service stubs.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    unused_imports,
    unused_results,
    unknown_lints,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code
)]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// The vsock port the agent's ttrpc server listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Where the agent mounts the sandbox's shared file system (virtio-fs): the
/// shim names container rootfs and shared volumes by paths below it.
pub const GUEST_SHARED_MOUNT: &str = "/run/kata-like/shared";

/// Below this, guest-local storages (tmpfs) are mounted for a pod.
pub const GUEST_EPHEMERAL_ROOT: &str = "/run/kata-like/ephemeral";

/// The vsock port of the agent's stdio streams (see `Stdio` in the proto).
pub const IO_VSOCK_PORT: u32 = 1025;

/// The vsock port of the agent's port forwarder: a connection's first line
/// is `<tcp port>\n`; the agent connects to that port on the guest's
/// 127.0.0.1, answers `OK\n` (or `ERR <reason>\n` and closes) and then
/// relays bytes both ways. This is how `kubectl port-forward` reaches a pod.
pub const FORWARD_VSOCK_PORT: u32 = 1026;

/// exec_id of a container's init process.
pub const INIT_EXEC_ID: &str = "init";

/// The largest ttrpc message (header excluded) either side sends or accepts:
/// ttrpc's own frame limit. A request the client would have to send larger is
/// refused before it leaves, naming both sizes (`AgentClientError::TooLarge`).
pub const MAX_MESSAGE_BYTES: usize = ttrpc::proto::MESSAGE_LENGTH_MAX;

/// Output captured per stream by `RunProcess`; more is dropped and flagged.
/// Two full streams stay well below ttrpc's 4 MiB message limit.
pub const MAX_CAPTURED_OUTPUT: usize = 1 << 20;

/// The byte the agent writes to the VMM's boot-timer device once it runs.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// Kernel command-line key through which the VMM tells the agent the guest
/// physical address of the boot-timer device (hex, e.g. `0xd0000000`). It has
/// no '.', so the kernel hands it to init as an environment variable.
pub const BOOT_TIMER_CMDLINE_KEY: &str = "kata_like_boot_timer";

/// A container spec's PID namespace path naming the pod's shared PID
/// namespace (Kubernetes' shareProcessNamespace): the agent starts the
/// pod's PID 1 (a reaper, as the pause container under runc) on first use
/// and binds its namespace here.
pub const GUEST_POD_PID_NS: &str = "/run/kata-like/pod-pid-ns";
