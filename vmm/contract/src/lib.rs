//! The contract between kata-like's runtime (`runtime-shim/`) and its VMM
//! (`kata-like-vmm`): both ends link this crate, so what one side writes
//! the other parses from the same type.
//!
//! * [`args`]: the VMM's command line ([`args::VmmArgs`]), produced by the
//!   runtime with [`args::VmmArgs::to_argv`] and parsed by the VMM with
//!   clap from the same struct.
//! * [`api`]: the control socket's requests and answers (pause, resume,
//!   snapshot, status) and the client call.
//! * [`snapshot`]: the snapshot directory's file names and format version.
//! * [`tap`]: the tap device the runtime opens in a pod's network
//!   namespace and hands to the VMM by descriptor.
//! * [`kvm`]: the KVM capabilities a VM needs (`kata-like check` and the
//!   VMM's builder ask the same list).
//!
//! The runtime links this crate only, never the VMM crate (its KVM, vhost
//! and seccomp code stays in the VMM process).

pub mod api;
pub mod args;
pub mod kvm;
pub mod snapshot;
pub mod tap;

pub use args::{CpuTemplate, FsConfig, NetConfig, SeccompMode, SerialOutput, VmmArgs};
