//! Pods through containerd's CRI plugin, kata-like against runc side by side
//! in one private containerd (the CRI test harness, CNI bridge):
//!
//! * RunPodSandbox latency (it returns once the sandbox is SANDBOX_READY),
//!   and pod-with-one-container latency (RunPodSandbox + CreateContainer +
//!   StartContainer), medians of `ROUNDS` interleaved rounds;
//! * host memory of an idle kata-like pod: PSS of its shim, VMM and
//!   virtiofsd processes;
//! * `CONCURRENT` pods (with one container each) started at once: total
//!   time and p50/p99 per pod.
//!
//! `cargo run --release -p kata-like-tests --bin bench_cri -- [ROUNDS] [CONCURRENT]`
//! (defaults 3 and 10; needs root, /dev/kvm and scripts/setup.sh's
//! artefacts).

use std::time::Instant;

use test_infra::bench::{median, percentile, pss};
use test_infra::cri::{Cri, HANDLER};

/// Starts a pod with `handler` and one idle container; (sandbox seconds,
/// pod-with-container seconds, pod id).
fn start_pod(cri: &Cri, handler: &str, name: &str) -> Result<(f64, f64, String), String> {
    let config = cri.pod_config(name);
    let begin = Instant::now();
    let req = k8s_cri::v1::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
    let pod = cri
        .call(|mut c| async move { c.run_pod_sandbox(req).await })
        .map_err(|e| format!("{handler} RunPodSandbox: {e}\n{}", cri.containerd.log_tail()))?
        .pod_sandbox_id;
    let sandbox = begin.elapsed().as_secs_f64();
    cri.start_container(&pod, &config, Cri::container_config("idle", &["sleep", "100000"]))
        .map_err(|e| format!("{handler} container: {e}\n{}", cri.containerd.log_tail()))?;
    Ok((sandbox, begin.elapsed().as_secs_f64(), pod))
}

/// KiB of PSS of the kata-like processes of pod `pod`: (shim, VMM, virtiofsd).
fn pod_pss(cri: &Cri, pod: &str) -> (u64, u64, u64) {
    let state = cri.containerd.kata_state.display().to_string();
    let prefix: String = pod.chars().take(12).collect();
    let dir = std::fs::read_dir(&cri.containerd.kata_state)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .find(|p| p.contains(&prefix))
        .unwrap_or(state);
    let sum = |needles: &[&str]| test_infra::processes_with(needles).into_iter().map(|p| pss(p).0).sum::<u64>();
    (sum(&["containerd-shim-kata-like-v2", pod]), sum(&["kata-like-vmm", &dir]), sum(&["virtiofsd", &dir]))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = args.first().copied().unwrap_or(3);
    let concurrent = args.get(1).copied().unwrap_or(10);
    if let Some(why) = test_infra::vm_unavailable().or_else(test_infra::cri::unavailable) {
        eprintln!("bench_cri cannot run: {why}");
        std::process::exit(2);
    }
    let cri = Cri::start().unwrap_or_else(|e| panic!("{e}"));
    let handlers = ["runc", HANDLER];
    let mut sandbox: [Vec<f64>; 2] = Default::default();
    let mut with_container: [Vec<f64>; 2] = Default::default();
    let mut memory = Vec::new();
    for round in 0..rounds {
        for (i, handler) in handlers.iter().enumerate() {
            let (s, w, pod) =
                start_pod(&cri, handler, &format!("bench-{handler}-{round}")).unwrap_or_else(|e| panic!("{e}"));
            eprintln!("round {round} {handler}: sandbox {s:.2} s, with container {w:.2} s");
            sandbox[i].push(s);
            with_container[i].push(w);
            if *handler == HANDLER {
                // Idle: let the guest settle before reading PSS.
                std::thread::sleep(std::time::Duration::from_secs(10));
                memory.push(pod_pss(&cri, &pod));
            }
            cri.remove_pod(&pod).unwrap_or_else(|e| panic!("remove {pod}: {e}"));
        }
    }
    println!("\nmedians of {rounds} interleaved rounds\n");
    println!("| measure | runc | kata-like | kata-like / runc |\n|---|---|---|---|");
    for (name, v) in [("RunPodSandbox → SANDBOX_READY", &sandbox), ("pod with one container started", &with_container)]
    {
        let (r, k) = (median(v[0].clone()), median(v[1].clone()));
        println!("| {name} | {r:.2} s | {k:.2} s | {:.0} |", k / r);
    }
    let total: Vec<f64> = memory.iter().map(|(a, b, c)| mib(a + b + c)).collect();
    let pick = |f: fn(&(u64, u64, u64)) -> u64| median(memory.iter().map(|m| mib(f(m))).collect());
    println!(
        "\nidle kata-like pod, host PSS (median): {:.1} MiB = shim {:.1} + VMM {:.1} + virtiofsd {:.1}",
        median(total),
        pick(|m| m.0),
        pick(|m| m.1),
        pick(|m| m.2)
    );

    for handler in handlers {
        let begin = Instant::now();
        let per_pod: Vec<f64> = std::thread::scope(|scope| {
            let started: Vec<_> = (0..concurrent)
                .map(|n| {
                    let cri = &cri;
                    scope.spawn(move || start_pod(cri, handler, &format!("conc-{handler}-{n}")))
                })
                .collect();
            let results: Vec<(f64, f64, String)> = started
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())).unwrap_or_else(|e| panic!("{e}")))
                .collect();
            for (_, _, pod) in &results {
                cri.remove_pod(pod).unwrap_or_else(|e| panic!("remove {pod}: {e}"));
            }
            results.into_iter().map(|(_, w, _)| w).collect()
        });
        let all = per_pod.iter().copied().fold(0.0, f64::max);
        println!(
            "\n{concurrent} pods with one container started at once, {handler}: all running after {all:.1} s \
             (wall {:.1} s incl. removal); per pod p50 {:.1} s, p99 {:.1} s",
            begin.elapsed().as_secs_f64(),
            percentile(per_pod.clone(), 50.0),
            percentile(per_pod, 99.0)
        );
    }
    let left = cri.containerd.wait_clean(std::time::Duration::from_secs(60));
    assert!(left.is_empty(), "leftovers: {left:#?}");
}
