//! Snapshot benchmark for docs/benchmarks.md: cold boot → agent answering
//! vs restore → agent answering, side by side on this machine.
//!
//!   cargo run --release -p kata-like-tests --bin bench_snapshot -- [RUNS]
//!
//! Per run and device set (with and without a virtio-fs device, whose
//! vhost-user backend makes the restore copy RAM into a memfd instead of
//! mapping the snapshot file):
//! * cold: spawn (virtiofsd included) → the agent answered a health check;
//! * snapshot: request → state and memory files written (the VM paused);
//! * restore: spawn (virtiofsd included) → the agent answered, the Restored
//!   RPC (entropy, clock) included; and VMM spawn → its first KVM_RUN (the
//!   guest running again), with the memory file's checksum checked (the
//!   default: on a thread of its own beside the rest of the restore, waited
//!   for before any vCPU runs) and not checked (`--skip-snapshot-check`),
//!   interleaved;
//! * the memory file: bytes of data against guest RAM.
//!
//! Medians are printed with the cold/restore ratio. Absolute times measure
//! the nested emulator (guest kernel code is emulated); compare the ratio.

use std::time::{Duration, Instant};

use kata_like_runtime::vm::virtiofsd::SharedFs;
use kata_like_runtime::vm::{SandboxVm, VmSpec};
use test_infra::Artifacts;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

struct Run {
    cold: Duration,
    snapshot: Duration,
    /// Restore → agent, checked and unchecked.
    restore: [Duration; 2],
    /// VMM spawn → first KVM_RUN, checked and unchecked.
    first_run: [Duration; 2],
    data_bytes: u64,
    ram_bytes: u64,
}

fn spec(artifacts: &Artifacts, shared_dir: Option<&std::path::Path>) -> VmSpec {
    let mut spec = artifacts.vm_spec();
    spec.shared = shared_dir.map(|dir| SharedFs {
        virtiofsd: kata_like_runtime::artifacts::default_virtiofsd(),
        dir: dir.to_path_buf(),
        tag: "kataShared".into(),
        cache: "auto".into(),
        extra_args: Vec::new(),
    });
    spec
}

fn one_run(artifacts: &Artifacts, with_fs: bool) -> Result<Run, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let shared = tmp.path().join("shared");
    std::fs::create_dir_all(&shared).map_err(|e| e.to_string())?;
    let spec = spec(artifacts, with_fs.then_some(shared.as_path()));

    let t = Instant::now();
    let vm = SandboxVm::start(&spec).map_err(|e| format!("cold boot: {e}"))?;
    let cold = t.elapsed();
    let snap = tmp.path().join("snap");
    let t = Instant::now();
    let (ram_bytes, data_bytes) = vm.snapshot(&snap).map_err(|e| format!("snapshot: {e}"))?;
    let snapshot = t.elapsed();
    drop(vm);

    let mut restore = [Duration::ZERO; 2];
    let mut first_run = [Duration::ZERO; 2];
    for (k, skip) in [false, true].into_iter().enumerate() {
        let mut restore_spec = spec.clone();
        restore_spec.restore_from = Some(snap.clone());
        if skip {
            restore_spec.vmm_args.push("--skip-snapshot-check".into());
        }
        let t = Instant::now();
        let restored = SandboxVm::start(&restore_spec).map_err(|e| format!("restore: {e}"))?;
        restore[k] = t.elapsed();
        let first = restored.boot_times().first_kvm_run_us.ok_or("the VMM logged no first KVM_RUN")?;
        first_run[k] = Duration::from_micros(first);
        restored.agent().health().map_err(|e| format!("restored agent: {e}"))?;
        drop(restored);
    }
    Ok(Run { cold, snapshot, restore, first_run, data_bytes, ram_bytes })
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let artifacts = match Artifacts::locate() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench_snapshot: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "| devices | cold boot → agent | snapshot | restore → agent | cold / restore | restore → first KVM_RUN, checked | \
         unchecked | memory file data / RAM |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for with_fs in [false, true] {
        let mut all = Vec::new();
        for i in 0..runs {
            match one_run(&artifacts, with_fs) {
                Ok(run) => {
                    eprintln!(
                        "run {i} fs={with_fs}: cold {:?}, snapshot {:?}, restore {:?} (unchecked {:?}), \
                         first KVM_RUN {:?} (unchecked {:?}), {} of {} MiB",
                        run.cold,
                        run.snapshot,
                        run.restore[0],
                        run.restore[1],
                        run.first_run[0],
                        run.first_run[1],
                        run.data_bytes >> 20,
                        run.ram_bytes >> 20
                    );
                    all.push(run);
                }
                Err(e) => {
                    eprintln!("bench_snapshot: run {i}: {e}");
                    std::process::exit(1);
                }
            }
        }
        let pick = |f: fn(&Run) -> Duration| median(all.iter().map(f).collect());
        let cold = pick(|r| r.cold);
        let restore = pick(|r| r.restore[0]);
        let data = all.iter().map(|r| r.data_bytes).max().unwrap_or(0);
        let ram = all.first().map_or(0, |r| r.ram_bytes);
        println!(
            "| vsock{} | {:.2} s | {:.0} ms | {:.0} ms | ×{:.0} | {:.1} ms | {:.1} ms | {:.1} MiB / {} MiB |",
            if with_fs { " + virtio-fs" } else { "" },
            cold.as_secs_f64(),
            pick(|r| r.snapshot).as_secs_f64() * 1e3,
            restore.as_secs_f64() * 1e3,
            cold.as_secs_f64() / restore.as_secs_f64().max(1e-9),
            pick(|r| r.first_run[0]).as_secs_f64() * 1e3,
            pick(|r| r.first_run[1]).as_secs_f64() * 1e3,
            data as f64 / (1 << 20) as f64,
            ram >> 20
        );
    }
}
