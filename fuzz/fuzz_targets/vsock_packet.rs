//! See kata_like_vmm::fuzz::vsock_packet.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kata_like_vmm::fuzz::vsock_packet(data));
