//! kata-like's host side.
//!
//! * [`sandbox`]: one sandbox VM — the `kata-like-vmm` process, its state
//!   directory and the agent client.
//! * [`artifacts`]: where the kernel, initrd and VMM are found by default.
//! * [`child`]: starting the VMM and virtiofsd so they die with us.
//! * [`network`]: pod networking (a tap joined to the CNI interface by tc).
//! * [`shim`]: the containerd shim v2 (`containerd-shim-kata-like-v2`).
//! * [`standalone`]: `kata-like run/state/kill/delete/spec` without containerd.

pub mod artifacts;
pub mod boot_slots;
pub mod cgroup;
pub mod check;
pub mod child;
pub mod config;
pub mod features;
pub mod network;
pub mod sandbox;
pub mod shim;
pub mod standalone;
mod supervise;
pub mod template;
pub mod virtiofsd;
