//! Docker benchmark for docs/benchmarks.md: kata-like beside runc in one
//! private dockerd, runs interleaved.
//!
//!   cargo run --release -p kata-like-tests --bin bench_docker -- [RUNS]
//!
//! * `docker run --rm IMAGE true` wall time: runc vs kata-like restoring a
//!   VM template (the default) vs kata-like booting cold (the
//!   `kata-like-cold` runtime, `vm_templates = false`); medians, ratios.
//! * `docker exec C true` wall time in idle containers of each.
//! * Host memory of one idle container: PSS of the container's host
//!   process (monitor) + VMM + virtiofsd, guest RAM shown apart; runc's
//!   shim + container process beside it.
//!
//! Absolute times measure the nested emulator; compare the ratios.

use std::time::{Duration, Instant};

use test_infra::bench::{median, pss};
use test_infra::docker::{Docker, IMAGE, RUNTIME, RUNTIME_COLD};

fn timed(d: &Docker, args: &[&str]) -> f64 {
    let start = Instant::now();
    let out = d.docker(args);
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "docker {args:?}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log_tail()
    );
    secs
}

/// PIDs of `pid`'s children (direct).
fn children(pid: u32) -> Vec<u32> {
    test_infra::processes()
        .into_iter()
        .filter(|(child, _)| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .map(|(child, _)| child)
        .collect()
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let d = Docker::start().unwrap_or_else(|e| panic!("{e}"));
    // Warm-up: each runtime once (builds the VM template if missing).
    for runtime in ["runc", RUNTIME, RUNTIME_COLD] {
        timed(&d, &["run", "--rm", "--runtime", runtime, IMAGE, "true"]);
    }
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..runs {
        for (i, runtime) in ["runc", RUNTIME, RUNTIME_COLD].iter().enumerate() {
            let t = timed(&d, &["run", "--rm", "--runtime", runtime, IMAGE, "true"]);
            eprintln!("round {round}: docker run --rm --runtime {runtime} true: {t:.2} s");
            times[i].push(t);
        }
    }
    let [runc, template, cold] = times.map(median);
    println!("docker run --rm IMAGE true, median of {runs} (interleaved):");
    println!("  runc                      {runc:7.2} s");
    println!("  kata-like (VM template)   {template:7.2} s   {:6.1}x runc", template / runc);
    println!(
        "  kata-like (cold boot)     {cold:7.2} s   {:6.1}x runc   template/cold {:.2}",
        cold / runc,
        template / cold
    );

    // Idle containers: exec latency and memory.
    timed(&d, &["run", "-d", "--name", "idle-runc", "--runtime", "runc", IMAGE, "sleep", "100000"]);
    timed(&d, &["run", "-d", "--name", "idle-kata", "--runtime", RUNTIME, IMAGE, "sleep", "100000"]);
    let mut exec: [Vec<f64>; 2] = Default::default();
    for _ in 0..runs.max(3) {
        exec[0].push(timed(&d, &["exec", "idle-runc", "true"]));
        exec[1].push(timed(&d, &["exec", "idle-kata", "true"]));
    }
    let [exec_runc, exec_kata] = exec.map(median);
    println!("docker exec C true, median of {}:", runs.max(3));
    println!("  runc {exec_runc:.2} s, kata-like {exec_kata:.2} s ({:.1}x)", exec_kata / exec_runc);

    std::thread::sleep(Duration::from_secs(10));
    let pid_of = |name: &str| -> u32 {
        let out = d.docker(&["inspect", "-f", "{{.State.Pid}}", name]);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    };
    let kib = |pids: &[u32]| pids.iter().map(|p| pss(*p)).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let monitor = pid_of("idle-kata");
    let vm: Vec<u32> = children(monitor);
    let (monitor_kib, _) = kib(&[monitor]);
    let (vm_kib, guest_kib) = kib(&vm);
    let runc_pid = pid_of("idle-runc");
    let runc_shim: Vec<u32> = test_infra::processes()
        .into_iter()
        .filter(|(p, c)| c.contains("containerd-shim-runc-v2") && children(*p).contains(&runc_pid))
        .map(|(p, _)| p)
        .collect();
    let (runc_kib, _) = kib(&[vec![runc_pid], runc_shim.clone()].concat());
    let kata_shim: Vec<u32> = test_infra::processes()
        .into_iter()
        .filter(|(p, c)| c.contains("containerd-shim-runc-v2") && children(*p).contains(&monitor))
        .map(|(p, _)| p)
        .collect();
    let (kata_shim_kib, _) = kib(&kata_shim);
    let mib = |k: u64| k as f64 / 1024.0;
    println!("host memory of one idle container (PSS):");
    println!(
        "  kata-like: monitor {:.1} MiB + VMM and virtiofsd {:.1} MiB (guest RAM {:.1} of it) = {:.1} MiB; Docker's runc shim {:.1} MiB",
        mib(monitor_kib),
        mib(vm_kib),
        mib(guest_kib),
        mib(monitor_kib + vm_kib),
        mib(kata_shim_kib)
    );
    println!("  runc: shim + container {:.1} MiB", mib(runc_kib));
    let _ = d.docker(&["rm", "-f", "idle-runc", "idle-kata"]);
}
