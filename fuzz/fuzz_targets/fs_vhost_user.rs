//! See kata_like_vmm::fuzz::fs_vhost_user.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kata_like_vmm::fuzz::fs_vhost_user(data));
