//! VM snapshots on real KVM: a cold-booted VM is snapshotted mid-workload
//! and restored into new VMM processes.
//!
//! One cold boot serves the whole test (a boot costs tens of seconds on
//! nested hosts); this is also the run's cold-boot coverage for snapshots.
//! Run with `scripts/test.sh` or
//! `cargo test -p kata-like-tests --test snapshot -- --ignored`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kata_like_runtime::vm::{SandboxVm, VmSpec};
use test_infra::vm_test;

fn sh(vm: &SandboxVm, script: &str) -> String {
    let args = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let out = vm.run(&args, &[], "", &[]).unwrap_or_else(|e| {
        panic!("{script}: {e}\n--- console ---\n{}", vm.console());
    });
    assert_eq!(out.exit_code, 0, "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The counter's value. The loop rewrites the file each tick (truncate,
/// then write), so a read can land in between and see it empty: read again.
fn counter(vm: &SandboxVm) -> u64 {
    for _ in 0..10 {
        if let Ok(value) = sh(vm, "cat /tmp/counter").parse() {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("/tmp/counter stayed empty or not a number");
}

/// Starts the VMM on a copy of `snapshot` with one file damaged, and
/// returns its exit status and error output.
fn restore_damaged(vmm: &Path, snapshot: &Path, file: &str, damage: impl Fn(&mut Vec<u8>)) -> (i32, String) {
    let copy = tempfile::tempdir().expect("tmp");
    for name in ["state", "memory"] {
        // cp keeps the memory file sparse.
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(snapshot.join(name))
            .arg(copy.path().join(name))
            .status()
            .expect("cp");
        assert!(status.success());
    }
    let path = copy.path().join(file);
    let mut bytes = std::fs::read(&path).expect("read");
    damage(&mut bytes);
    std::fs::write(&path, &bytes).expect("write");
    let out = Command::new(vmm)
        .arg("--restore")
        .arg(copy.path())
        .arg("--vsock-uds")
        .arg(copy.path().join("v.sock"))
        .args(["--serial", "null"])
        .output()
        .expect("the VMM runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
#[ignore = "boots a microVM; run with scripts/test.sh or `-- --ignored`"]
fn a_snapshot_restores_mid_workload_five_times_over_each_vm_distinct() {
    let Some(artifacts) = vm_test("a_snapshot_restores_mid_workload_five_times_over_each_vm_distinct") else { return };
    let snapshots = tempfile::tempdir().expect("tmp");
    let snapshot = snapshots.path().join("snap");

    // Cold boot, start a counter, snapshot while it runs.
    let started = Instant::now();
    let vm = SandboxVm::start(&artifacts.vm_spec()).expect("the VM boots");
    let cold = started.elapsed();
    // One tick a second with shell builtins only (`read -t` on a FIFO
    // nobody writes as the timer): forking a `sleep` per tick would cost the
    // guest kernel, which is emulated on nested hosts, most of a CPU.
    sh(&vm, "mkfifo /tmp/tick && (i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; read -t 1 x <> /tmp/tick; done) </dev/null >/dev/null 2>&1 & echo $! > /tmp/counter.pid");
    std::thread::sleep(Duration::from_millis(1500));
    let pid = sh(&vm, "cat /tmp/counter.pid");
    // Data in the snapshot's memory (the guest's /tmp is in RAM) that one
    // restored VM overwrites below.
    let template_md5 = sh(&vm, "head -c 2097152 /dev/urandom > /tmp/template-data && md5sum < /tmp/template-data");
    let before = counter(&vm);
    assert!(before > 0, "the counter runs");
    // KVM's exit counters through the control socket: a command in the
    // guest costs exits (virtio notifications, interrupts, halts).
    let exits = |vm: &SandboxVm| {
        let stats = vm.kvm_stats().expect("KVM statistics from the control socket");
        (stats.get("exits").copied().unwrap_or(0), stats.get("irq_injections").copied().unwrap_or(0))
    };
    let (exits_before, irqs_before) = exits(&vm);
    assert!(exits_before > 0 && irqs_before > 0, "a booted VM has exited and taken interrupts");
    sh(&vm, "true");
    let (exits_after, irqs_after) = exits(&vm);
    assert!(exits_after > exits_before && irqs_after > irqs_before, "a command costs exits and interrupts");
    let (ram, data) = vm.snapshot(&snapshot).expect("snapshot");
    assert_eq!(ram, 128 << 20);
    assert!(data > 0 && data < ram, "the memory file is sparse: {data} of {ram} bytes");
    let on_disk = std::fs::metadata(snapshot.join("memory")).expect("memory file");
    assert!(std::os::unix::fs::MetadataExt::blocks(&on_disk) * 512 < ram, "holes are not allocated");
    vm.resume().expect("resume after a snapshot");
    let resumed = counter(&vm);
    assert!(resumed >= before, "the original VM goes on ({before} -> {resumed})");
    drop(vm);

    // Five restores at once, each its own VMM process.
    let restore = |_: usize| {
        let mut spec: VmSpec = artifacts.vm_spec();
        spec.restore_from = Some(snapshot.clone());
        let t = Instant::now();
        let vm = SandboxVm::start(&spec).expect("the snapshot restores");
        (vm, t.elapsed())
    };
    let vms: Vec<(SandboxVm, Duration)> = std::thread::scope(|s| {
        (0..5)
            .map(|i| s.spawn(move || restore(i)))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("restore thread"))
            .collect()
    });
    let mut randoms = Vec::new();
    for (vm, took) in &vms {
        eprintln!("restore -> agent answering: {took:?} (cold boot {cold:?})");
        let first = counter(vm);
        assert!(first >= before, "the counter continues from the snapshot ({before} -> {first})");
        assert_eq!(sh(vm, "cat /tmp/counter.pid"), pid);
        assert!(sh(vm, &format!("test -d /proc/{pid} && echo alive")) == "alive", "the same counter process");
        std::thread::sleep(Duration::from_millis(2500));
        let later = counter(vm);
        assert!(later > first, "the counter keeps counting ({first} -> {later})");
        randoms.push(sh(vm, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'"));
        let log = std::fs::read_to_string(vm.state_dir().join("vmm.log")).unwrap_or_default();
        assert!(log.contains("VM restored from a snapshot"), "{log}");
    }
    let distinct: std::collections::BTreeSet<&String> = randoms.iter().collect();
    assert_eq!(distinct.len(), 5, "each restored VM has its own RNG state: {randoms:?}");

    // The restored VMs share the memory file's pages copy-on-write: one
    // overwrites the template's data and more of its RAM; the others, and
    // the file, keep the template's bytes.
    let file_sum = || {
        let out = Command::new("sha256sum").arg(snapshot.join("memory")).output().expect("sha256sum");
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
    };
    let file_before = file_sum();
    let scribbled = sh(
        &vms[0].0,
        "tr '\\000' Z < /dev/zero | head -c 2097152 | dd of=/tmp/template-data conv=notrunc 2>/dev/null; \
         tr '\\000' Y < /dev/zero | head -c 4194304 > /tmp/fill; md5sum < /tmp/template-data",
    );
    assert_ne!(scribbled, template_md5, "the scribbling VM sees its own writes");
    for (vm, _) in &vms[1..] {
        assert_eq!(sh(vm, "md5sum < /tmp/template-data"), template_md5, "another VM sees the template's bytes");
    }
    assert_eq!(file_sum(), file_before, "the memory file is untouched");

    // Free page reporting: memory a restored guest fills and frees goes
    // back to the host (the balloon), and comes back when the guest needs
    // it again.
    let vm = &vms[1].0;
    let pid = vm.vmm_pid().expect("the VMM's pid");
    let private = || test_infra::bench::pss_of(pid).guest_private;
    let fill = "head -c 25165824 /dev/zero > /tmp/balloon-fill && echo filled";
    assert_eq!(sh(vm, fill), "filled");
    let filled = private();
    sh(vm, "rm /tmp/balloon-fill");
    let deadline = Instant::now() + Duration::from_secs(60);
    while private() + (16 << 10) > filled && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let freed = private();
    eprintln!("guest RAM private to the VM: {filled} KiB filled, {freed} KiB after the guest freed 24 MiB");
    assert!(freed + (16 << 10) <= filled, "freed guest memory went back: {filled} KiB -> {freed} KiB");
    assert_eq!(sh(vm, fill), "filled", "the guest gets its memory back");
    let log = std::fs::read_to_string(vm.state_dir().join("vmm.log")).unwrap_or_default();
    assert!(!log.contains("balloon: a range not given back"), "{log}");
    drop(vms);

    // Damaged snapshots are refused before the guest runs.
    let vmm = &artifacts.vmm;
    let (code, err) = restore_damaged(vmm, &snapshot, "state", |b| b.truncate(b.len() / 2));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("truncated"), "{err}");
    let (code, err) = restore_damaged(vmm, &snapshot, "state", |b| {
        let n = b.len() - 40;
        b[n] ^= 0x20;
    });
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    let (code, err) = restore_damaged(vmm, &snapshot, "state", |b| b[8] = 99);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("format version 99") && err.contains("take a new snapshot"), "{err}");
    let (code, err) = restore_damaged(vmm, &snapshot, "memory", |b| b.truncate(b.len() - 4096));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("the state says guest RAM is"), "{err}");
    let (code, err) = restore_damaged(vmm, &snapshot, "memory", |b| {
        let at = b.iter().position(|&x| x != 0).expect("some data");
        b[at] ^= 0xff;
    });
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("checksum mismatch") && err.contains("memory"), "{err}");
}
