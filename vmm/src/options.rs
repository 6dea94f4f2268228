//! Options of the VMM process that are not part of the VM itself: what
//! [`Vmm::run`](crate::Vmm::run) and the jail need besides the VM's
//! [`VmConfig`](crate::VmConfig). Both recipes of [`crate::builder`] take
//! them, and the built [`Vmm`](crate::Vmm) keeps them.

use std::path::PathBuf;
use std::time::Duration;

use crate::jail::seccomp::SeccompMode;
use crate::jail::JailConfig;

/// Options of the VMM process that are not part of the VM itself.
#[derive(Clone, Debug, Default)]
pub struct VmmOptions {
    /// Sample the guest RIP at this interval and write a report here on exit.
    pub profile_rip: Option<(PathBuf, Duration)>,
    /// Serve pause/resume/snapshot requests on this Unix socket.
    pub api_sock: Option<PathBuf>,
    /// The jail to enter once the VM is built ([`crate::jail`]).
    pub jail: Option<JailConfig>,
    /// The seccomp filters of the VMM's threads.
    pub seccomp: SeccompMode,
    /// Restore without checking the memory file's checksum (benchmarks).
    pub skip_snapshot_check: bool,
}
