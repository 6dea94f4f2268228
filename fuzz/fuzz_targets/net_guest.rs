//! See kata_like_vmm::fuzz::net_guest.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kata_like_vmm::fuzz::net_guest(data));
