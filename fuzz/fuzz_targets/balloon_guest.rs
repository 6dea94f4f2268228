//! See kata_like_vmm::fuzz::balloon_guest.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kata_like_vmm::fuzz::balloon_guest(data));
