//! kata-like's host side.
//!
//! * [`sandbox`]: one sandbox VM — the `kata-like-vmm` process, its state
//!   directory and the agent client.
//! * [`artifacts`]: where the kernel, initrd and VMM are found by default.
//!
//! The containerd shim v2 (`containerd-shim-kata-like-v2`) builds on these
//! in its own issue; today its binary is a skeleton.

pub mod artifacts;
pub mod config;
pub mod sandbox;
pub mod shim;
pub mod virtiofsd;
