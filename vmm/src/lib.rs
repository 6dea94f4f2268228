//! kata-like-vmm: the KVM microVM monitor of kata-like.
//!
//! A VM is described by a [`VmConfig`] and built into a [`Vmm`] by
//! [`Vmm::build`], which reads as the boot sequence, or resumed from a
//! snapshot by [`Vmm::restore`], which reads as the restore sequence
//! ([`builder`]); [`Vmm::run`] runs it until the guest powers off, a vCPU
//! fails, or the VMM is signalled. What the VMM process needs besides the
//! VM is in [`VmmOptions`].
//!
//! The entry points of the fuzz targets (`fuzz`, used by `fuzz/`) are
//! built only with the `fuzzing` feature (and for unit tests).
//!
//! Devices: COM1 serial, the i8042 (guest reset), a boot-timer MMIO page and
//! a userspace virtio-vsock device over virtio-mmio with Firecracker's
//! hybrid vsock backend. Guest kernels boot through PVH (uncompressed ELF)
//! or the Linux 64-bit protocol (bzImage).

pub mod api;
pub mod arch;
pub mod builder;
pub mod clock;
pub mod config;
pub mod devices;
pub mod exit;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
pub mod jail;
pub mod kvm_stats;
pub mod memory;
pub mod options;
pub mod pause;
pub mod profiler;
pub mod snapshot;
pub mod symbols;
pub mod vcpu;
pub mod vmm;

pub use builder::BuildError;
pub use config::{VmConfig, VsockConfig};
pub use exit::ExitReason;
pub use options::VmmOptions;
pub use vmm::Vmm;
