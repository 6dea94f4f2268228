//! `containerd-shim-kata-like-v2`: the containerd shim v2 of kata-like
//! (containerd selects it with `runtime_type = "io.containerd.kata-like.v2"`).
//! The work is in `kata_like_runtime::shim`.

use kata_like_runtime::shim::KataShim;

#[tokio::main]
async fn main() {
    containerd_shim::asynchronous::run::<KataShim>("io.containerd.kata-like.v2", None).await;
}
