//! `containerd-shim-kata-like-v2`: the containerd shim v2 of kata-like
//! (containerd selects it with `runtime_type = "io.containerd.kata-like.v2"`).
//! The work is in `kata_like_runtime::shim`.

use kata_like_runtime::shim::KataShim;

fn main() {
    const RUNTIME_ID: &str = "io.containerd.kata-like.v2";
    // `start` (every containerd bootstrap protocol) and `-info` are ours;
    // the server and `delete` are the containerd-shim crate's.
    if let Some(code) = kata_like_runtime::shim::bootstrap::dispatch(RUNTIME_ID) {
        std::process::exit(code);
    }
    kata_like_runtime::shim::one_malloc_arena();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("containerd-shim-kata-like-v2: error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(containerd_shim::asynchronous::run::<KataShim>(RUNTIME_ID, None));
}
