//! Architecture support. Only x86_64 today; the layout mirrors rust-vmm's
//! vmm-reference so that an aarch64 module can sit beside it.

pub mod x86_64;
