//! Pods through containerd's CRI plugin, kata-like against runc side by side
//! in one private containerd (the CRI test harness, CNI bridge):
//!
//! * RunPodSandbox latency (it returns once the sandbox is SANDBOX_READY),
//!   and pod-with-one-container latency (RunPodSandbox + CreateContainer +
//!   StartContainer), medians of `ROUNDS` interleaved rounds of runc,
//!   kata-like restoring the pod template (`kata-like`, the default) and
//!   kata-like booting cold (`kata-like-cold`: `vm_templates = false`); the
//!   template is built by a warm-up pod first;
//! * host memory of an idle kata-like pod: PSS of its shim, VMM and
//!   virtiofsd processes;
//! * `CONCURRENT` pods (with one container each) started at once, runc and
//!   kata-like from the template: total time and p50/p99 per pod.
//!
//! `cargo run --release -p kata-like-tests --bin bench_cri -- [ROUNDS] [CONCURRENT]`
//! (defaults 3 and 10; needs root, /dev/kvm and scripts/setup.sh's
//! artefacts).
//!
//! `… bench_cri -- density [COUNTS…]` (default 1 10 20): density instead.
//! Idle pods (one `sleep` container each) are added until there are COUNT
//! of them, runc's and then kata-like's from the template, and the host
//! PSS of all their processes is read after they settle: per pod, and for
//! kata-like split into shim, VMM (of it guest RAM, and of that the pages
//! the guest has to itself) and virtiofsd, with one guest's own view.

use std::time::Instant;

use test_infra::bench::{median, percentile, pss, pss_of, Pss};
use test_infra::containerd::COLD_HANDLER;
use test_infra::cri::{Cri, HANDLER};

/// Starts a pod with `handler` and one idle container; (sandbox seconds,
/// pod-with-container seconds, pod id, container id).
fn start_pod(cri: &Cri, handler: &str, name: &str) -> Result<(f64, f64, String, String), String> {
    let config = cri.pod_config(name);
    let begin = Instant::now();
    let req = k8s_cri::v1::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() };
    let pod = cri
        .call(|mut c| async move { c.run_pod_sandbox(req).await })
        .map_err(|e| format!("{handler} RunPodSandbox: {e}\n{}", cri.containerd.log_tail()))?
        .pod_sandbox_id;
    let sandbox = begin.elapsed().as_secs_f64();
    let container = cri
        .start_container(&pod, &config, Cri::container_config("idle", &["sleep", "100000"]))
        .map_err(|e| format!("{handler} container: {e}\n{}", cri.containerd.log_tail()))?;
    Ok((sandbox, begin.elapsed().as_secs_f64(), pod, container))
}

/// KiB of PSS of the kata-like processes of pod `pod`: (shim, VMM,
/// virtiofsd, the part of VMM + virtiofsd that is guest RAM).
fn pod_pss(cri: &Cri, pod: &str) -> (u64, u64, u64, u64) {
    let state = cri.containerd.kata_state.display().to_string();
    let prefix: String = pod.chars().take(12).collect();
    let dir = std::fs::read_dir(&cri.containerd.kata_state)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().display().to_string())
        .find(|p| p.contains(&prefix))
        .unwrap_or(state);
    // By program name: the VMM's own arguments name `virtiofsd.sock`.
    let sum = |program: &str, needle: &str| {
        test_infra::processes_of(program, &[needle]).into_iter().map(pss).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let (vmm, fsd) = (sum("kata-like-vmm", &dir), sum("virtiofsd", &dir));
    (sum("containerd-shim-kata-like-v2", pod).0, vmm.0, fsd.0, vmm.1 + fsd.1)
}

/// The guest kernel's memory counters (kB) that explain touched guest RAM,
/// read inside the pod's container.
fn guest_meminfo(cri: &Cri, container: &str) -> String {
    const KEYS: [&str; 9] =
        ["MemTotal", "MemFree", "Buffers", "Cached", "Shmem", "Slab", "KernelStack", "PageTables", "AnonPages"];
    match cri.exec_sync(container, &["cat", "/proc/meminfo"]) {
        Ok((0, out, _)) => out
            .lines()
            .filter(|l| KEYS.iter().any(|k| l.starts_with(&format!("{k}:"))))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(", "),
        other => format!("cannot read the guest's /proc/meminfo: {other:?}"),
    }
}

/// `root` and all its descendants.
fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The fields after the command name, which is in parentheses.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == parent).map(|(pid, _)| *pid));
        i += 1;
    }
    tree
}

fn sum_pss(pids: Vec<u32>) -> Pss {
    pids.into_iter().map(pss_of).fold(Pss::default(), |a, b| a + b)
}

/// Host PSS of this containerd's kata-like processes (shims: by their
/// `-address`; VMMs and virtiofsd: by the state root), as (shims, VMMs,
/// virtiofsd), and how many VMMs there are.
fn kata_pss(cri: &Cri) -> ([Pss; 3], usize) {
    let dir = cri.containerd.kata_state.parent().unwrap_or(&cri.containerd.kata_state).display().to_string();
    let vmms = test_infra::processes_of("kata-like-vmm", &[&dir]);
    let vmm_count = vmms.len();
    let kata = [
        sum_pss(test_infra::processes_of("containerd-shim-kata-like-v2", &[&dir])),
        sum_pss(vmms),
        sum_pss(test_infra::processes_of("virtiofsd", &[&dir])),
    ];
    (kata, vmm_count)
}

/// Host PSS of this containerd's runc shims with their pause and container
/// processes, and how many shims there are.
fn runc_pss(cri: &Cri) -> (Pss, usize) {
    let socket = cri.containerd.socket().display().to_string();
    let shims = test_infra::processes_of("containerd-shim-runc-v2", &[&socket]);
    let count = shims.len();
    (sum_pss(shims.into_iter().flat_map(process_tree).collect()), count)
}

/// The density table: idle pods added up to each of `counts`.
fn density(cri: &Cri, counts: &[usize]) {
    const SETTLE: std::time::Duration = std::time::Duration::from_secs(20);
    println!(
        "\nhost PSS per idle pod (one `sleep` container each), MiB; kata-like pods restored from the pod template\n\n\
         | pods | runc, per pod | kata-like, per pod | kata-like / runc | shim | VMM | of it guest RAM | of that private to the guest | virtiofsd | kata-like USS per pod |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    let mut rows = Vec::new();
    for handler in ["runc", HANDLER] {
        let mut pods = Vec::new();
        for &count in counts {
            while pods.len() < count {
                let (_, w, pod, container) = start_pod(cri, handler, &format!("dense-{handler}-{}", pods.len()))
                    .unwrap_or_else(|e| panic!("{e}"));
                eprintln!("{handler} pod {} started in {w:.1} s", pods.len() + 1);
                pods.push((pod, container));
            }
            std::thread::sleep(SETTLE);
            if handler == "runc" {
                let (runc, runc_count) = runc_pss(cri);
                assert_eq!(runc_count, count, "runc shims");
                rows.push((count, mib(runc.all) / count as f64, [Pss::default(); 3]));
            } else {
                let (kata, vmm_count) = kata_pss(cri);
                assert_eq!(vmm_count, count, "kata-like VMMs");
                if let Some(row) = rows.iter_mut().find(|r| r.0 == count) {
                    row.2 = kata;
                }
                eprintln!("guest memory with {count} pods (kB): {}", guest_meminfo(cri, &pods[0].1));
            }
        }
        for (pod, _) in pods {
            cri.remove_pod(&pod).unwrap_or_else(|e| panic!("remove {pod}: {e}"));
        }
    }
    for (count, runc, [shim, vmm, fsd]) in rows {
        let per = |kib: u64| mib(kib) / count as f64;
        let kata = per(shim.all + vmm.all + fsd.all);
        println!(
            "| {count} | {runc:.1} | {kata:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            kata / runc,
            per(shim.all),
            per(vmm.all),
            per(vmm.guest + fsd.guest),
            per(vmm.guest_private),
            per(fsd.all),
            per(shim.uss + vmm.uss + fsd.uss)
        );
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn main() {
    let density_mode = std::env::args().nth(1).as_deref() == Some("density");
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let rounds = args.first().copied().unwrap_or(3);
    let concurrent = args.get(1).copied().unwrap_or(10);
    if let Some(why) = test_infra::vm_unavailable().or_else(test_infra::cri::unavailable) {
        eprintln!("bench_cri cannot run: {why}");
        std::process::exit(2);
    }
    let cri = Cri::start().unwrap_or_else(|e| panic!("{e}"));
    // The pod template is built on first use: once, before any clock.
    let (s, _, pod, _) = start_pod(&cri, HANDLER, "bench-warmup").unwrap_or_else(|e| panic!("{e}"));
    eprintln!("warm-up pod (builds the pod template if there is none): {s:.1} s");
    cri.remove_pod(&pod).unwrap_or_else(|e| panic!("remove {pod}: {e}"));
    if density_mode {
        let counts = if args.is_empty() { vec![1, 10, 20] } else { args };
        density(&cri, &counts);
        let left = cri.containerd.wait_clean(std::time::Duration::from_secs(60));
        assert!(left.is_empty(), "leftovers: {left:#?}");
        return;
    }
    let handlers = ["runc", HANDLER, COLD_HANDLER];
    let mut sandbox: [Vec<f64>; 3] = Default::default();
    let mut with_container: [Vec<f64>; 3] = Default::default();
    let mut memory = Vec::new();
    for round in 0..rounds {
        for (i, handler) in handlers.iter().enumerate() {
            let (s, w, pod, container) =
                start_pod(&cri, handler, &format!("bench-{handler}-{round}")).unwrap_or_else(|e| panic!("{e}"));
            eprintln!("round {round} {handler}: sandbox {s:.2} s, with container {w:.2} s");
            sandbox[i].push(s);
            with_container[i].push(w);
            if *handler == HANDLER {
                // Idle: let the guest settle before reading PSS.
                std::thread::sleep(std::time::Duration::from_secs(10));
                memory.push(pod_pss(&cri, &pod));
                eprintln!("round {round} guest memory (kB): {}", guest_meminfo(&cri, &container));
            }
            cri.remove_pod(&pod).unwrap_or_else(|e| panic!("remove {pod}: {e}"));
        }
    }
    println!("\nmedians of {rounds} interleaved rounds\n");
    println!(
        "| measure | runc | kata-like, template | kata-like, cold | template / runc | cold / template |\n\
         |---|---|---|---|---|---|"
    );
    for (name, v) in [("RunPodSandbox → SANDBOX_READY", &sandbox), ("pod with one container started", &with_container)]
    {
        let (r, t, c) = (median(v[0].clone()), median(v[1].clone()), median(v[2].clone()));
        println!("| {name} | {r:.2} s | {t:.2} s | {c:.2} s | {:.0} | {:.1} |", t / r, c / t);
    }
    let total: Vec<f64> = memory.iter().map(|(a, b, c, _)| mib(a + b + c)).collect();
    let pick = |f: fn(&(u64, u64, u64, u64)) -> u64| median(memory.iter().map(|m| mib(f(m))).collect());
    println!(
        "\nidle kata-like pod, host PSS (median): {:.1} MiB = shim {:.1} + VMM {:.1} + virtiofsd {:.1}; \
         of VMM + virtiofsd, guest RAM {:.1}",
        median(total),
        pick(|m| m.0),
        pick(|m| m.1),
        pick(|m| m.2),
        pick(|m| m.3)
    );

    for handler in ["runc", HANDLER] {
        let begin = Instant::now();
        let per_pod: Vec<f64> = std::thread::scope(|scope| {
            let started: Vec<_> = (0..concurrent)
                .map(|n| {
                    let cri = &cri;
                    scope.spawn(move || start_pod(cri, handler, &format!("conc-{handler}-{n}")))
                })
                .collect();
            let results: Vec<(f64, f64, String, String)> = started
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())).unwrap_or_else(|e| panic!("{e}")))
                .collect();
            if handler == HANDLER {
                // All pods idle: what each costs on a node running several,
                // where the binaries' pages are shared between them.
                std::thread::sleep(std::time::Duration::from_secs(10));
                let (kata, vms) = kata_pss(&cri);
                let kib: u64 = kata.iter().map(|p| p.all).sum();
                println!(
                    "\n{vms} idle kata-like pods at once: host PSS {:.1} MiB in all, {:.1} MiB per pod",
                    mib(kib),
                    mib(kib) / vms.max(1) as f64
                );
            }
            for (_, _, pod, _) in &results {
                cri.remove_pod(pod).unwrap_or_else(|e| panic!("remove {pod}: {e}"));
            }
            results.into_iter().map(|(_, w, _, _)| w).collect()
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
