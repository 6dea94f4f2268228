//! `containerd-shim-kata-like-v2`: the containerd shim v2 of kata-like.
//!
//! Skeleton: the Task service is the subject of the next issue (containerd
//! shim v2 on the `containerd-shim` crate, reusing `kata_like_runtime::sandbox`).
//! Until then it refuses clearly instead of pretending to work.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "containerd-shim-kata-like-v2 {}: the containerd shim is not implemented yet; \
         use `kata-like vm exec` to run a command in a microVM",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(1)
}
