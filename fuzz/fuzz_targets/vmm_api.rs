//! See kata_like_vmm::fuzz::api_request.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kata_like_vmm::fuzz::api_request(data));
