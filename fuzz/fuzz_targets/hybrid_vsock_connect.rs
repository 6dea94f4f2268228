//! See kata_like_vmm::fuzz::hybrid_vsock_connect.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kata_like_vmm::fuzz::hybrid_vsock_connect(data));
