//! Bad input to `kata-like-vmm`: each case must end with exit status 2 and a
//! one-line error naming the thing at fault, before any guest runs, and must
//! leave no socket behind. Needs /dev/kvm (the VMM opens it first); without
//! it the cases are skipped with the reason printed.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};

const VMM: &str = env!("CARGO_BIN_EXE_kata-like-vmm");

fn kvm_usable() -> bool {
    let ok = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !ok {
        eprintln!("SKIPPED: /dev/kvm is not usable here");
    }
    ok
}

fn vmm(args: &[&str]) -> Output {
    Command::new(VMM).args(args).env("RUST_LOG", "off").output().expect("run kata-like-vmm")
}

/// Exit status 2 and exactly one error line that contains every `needle`.
fn assert_fails_naming(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].starts_with("kata-like-vmm: error: "), "{stderr}");
    for needle in needles {
        assert!(errors[0].contains(needle), "error names {needle:?}: {stderr}");
    }
}

fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::File::create(&path).and_then(|mut f| f.write_all(bytes)).expect("write");
    path.to_string_lossy().into_owned()
}

/// A minimal 64-bit ELF whose single PT_LOAD lies far beyond guest memory.
fn elf_loading_at(paddr: u64) -> Vec<u8> {
    let mut elf = vec![0u8; 0x1000];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[6] = 1; // version
    elf[16] = 2; // ET_EXEC
    elf[18] = 0x3e; // x86-64
    elf[20] = 1;
    elf[24..32].copy_from_slice(&paddr.to_le_bytes()); // e_entry
    elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let ph = 64;
    elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf[ph + 8..ph + 16].copy_from_slice(&0x200u64.to_le_bytes()); // p_offset
    elf[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
    elf[ph + 32..ph + 40].copy_from_slice(&0x100u64.to_le_bytes()); // p_filesz
    elf[ph + 40..ph + 48].copy_from_slice(&0x100u64.to_le_bytes()); // p_memsz
    elf
}

#[test]
fn missing_garbage_and_truncated_kernels_are_named() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    assert_fails_naming(&vmm(&["--kernel", "/nonexistent/vmlinux"]), &["/nonexistent/vmlinux"]);
    let garbage = file_with(dir.path(), "garbage", &[0x5a; 64 * 1024]);
    assert_fails_naming(&vmm(&["--kernel", &garbage]), &[&garbage, "ELF vmlinux or bzImage"]);
    let truncated = file_with(dir.path(), "truncated", b"\x7fELF\x02\x01\x01\x00");
    assert_fails_naming(&vmm(&["--kernel", &truncated]), &[&truncated, "ELF"]);
    let far = file_with(dir.path(), "far", &elf_loading_at(0x4000_0000));
    assert_fails_naming(&vmm(&["--kernel", &far, "--memory", "64"]), &[&far]);
}

#[test]
fn bad_sizes_and_missing_initrd_are_named() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = file_with(dir.path(), "kernel", &elf_loading_at(0x100_0000));
    assert_fails_naming(&vmm(&["--kernel", &kernel, "--memory", "8"]), &["memory_mib", "8"]);
    assert_fails_naming(&vmm(&["--kernel", &kernel, "--vcpus", "0"]), &["vcpus"]);
    assert_fails_naming(&vmm(&["--kernel", &kernel, "--initrd", "/nonexistent/initrd"]), &["/nonexistent/initrd"]);
    let big = dir.path().join("big-initrd");
    std::fs::File::create(&big).and_then(|f| f.set_len(60 << 20)).expect("sparse initrd");
    assert_fails_naming(
        &vmm(&["--kernel", &kernel, "--memory", "64", "--initrd", &big.to_string_lossy()]),
        &["does not fit"],
    );
    let config = file_with(dir.path(), "vm.json", br#"{"kernel": "/k", "memroy_mib": 64}"#);
    assert_fails_naming(&vmm(&["--config", &config]), &[&config, "memroy_mib"]);
}

#[test]
fn vsock_socket_in_use_or_unwritable_is_named_and_left_alone() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = file_with(dir.path(), "kernel", &elf_loading_at(0x100_0000));
    let busy = dir.path().join("busy.sock");
    let _owner = UnixListener::bind(&busy).expect("another process's socket");
    let busy_str = busy.to_string_lossy();
    assert_fails_naming(&vmm(&["--kernel", &kernel, "--vsock-uds", &busy_str]), &[&busy_str, "in use"]);
    assert!(busy.exists(), "the other process's socket is untouched");

    let not_socket = file_with(dir.path(), "plain", b"data");
    assert_fails_naming(&vmm(&["--kernel", &kernel, "--vsock-uds", &not_socket]), &[&not_socket, "not a socket"]);
    assert_fails_naming(
        &vmm(&["--kernel", &kernel, "--vsock-uds", "/nonexistent/dir/v.sock"]),
        &["/nonexistent/dir/v.sock"],
    );
    assert!(!Path::new("/nonexistent/dir/v.sock").exists());
    assert_fails_naming(
        &vmm(&["--kernel", &kernel, "--vsock-uds", &dir.path().join("v.sock").to_string_lossy(), "--guest-cid", "2"]),
        &["guest_cid"],
    );
    assert!(!dir.path().join("v.sock").exists(), "no socket left behind");
}
