//! A snapshot directory as both ends see it: the VMM writes and reads it,
//! the runtime keeps templates of it and checks their version.

/// File name of the VM state inside a snapshot directory.
pub const STATE_FILE: &str = "state";
/// File name of guest RAM inside a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Magic bytes at the start of the state file.
pub const MAGIC: &[u8; 8] = b"KLVMSNAP";
/// The state format this build writes and reads. Bump it whenever the VM
/// state or the memory layout changes: templates of another version are
/// rebuilt, never restored.
pub const FORMAT_VERSION: u32 = 1;
