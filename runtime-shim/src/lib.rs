//! kata-like's host side, in layers (docs/design.md, "Where things live"):
//!
//! * Front ends, each a thin adapter over the core, never importing each
//!   other: [`shim`] (the containerd shim v2,
//!   `containerd-shim-kata-like-v2`) and [`standalone`] (`kata-like
//!   run/state/kill/delete/spec` without containerd).
//! * The sandbox core, [`sandbox`]: a sandbox's VM and its containers, one
//!   operation per lifecycle step, one error type, the task lifecycle.
//! * Under it: [`vm`] (the host processes: VMM and virtiofsd children,
//!   supervision, logs), [`network`] (pod networking), [`config`],
//!   [`artifacts`] (default kernel, initrd, VMM), [`mountinfo`].
//! * [`check`] (`kata-like check`) and [`features`] (the OCI features
//!   document) are read-only reports.
//!
//! The VMM is reached only through its contract crate
//! (`kata_like_vmm_contract`: arguments, control socket, snapshot names).

pub mod artifacts;
pub mod check;
pub mod config;
pub mod features;
pub mod mountinfo;
pub mod network;
pub mod sandbox;
pub mod shim;
pub mod standalone;
pub mod vm;
