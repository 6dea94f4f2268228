//! x86_64: memory layout, CPUID templates, boot protocols, vCPU registers and
//! the MP table.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
pub mod vmlinux;
