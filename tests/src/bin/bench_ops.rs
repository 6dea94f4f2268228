//! Per-operation cost for docs/benchmarks.md (issue 23): a container's
//! start-to-exit and an exec, through one private containerd, runc against
//! kata-like from the pod template and kata-like cold, interleaved.
//!
//!   cargo run --release -p kata-like-tests --bin bench_ops -- [ROUNDS]
//!
//! Per round and runtime:
//! * run: `ctr run --rm IMAGE ID /bin/true`, wall time;
//! * exec: in a running `sleep` container, after one warm-up exec,
//!   `ctr task exec ID /bin/true`, wall time.
//!
//! For kata-like it also reads what the guest cost during each operation:
//! KVM's counters of the VM from the VMM's control socket
//! (`{"action":"stats"}`: exits by kind, interrupts injected, instructions
//! KVM emulated), and for an exec the guest's own counters (context
//! switches, interrupts, forks, page faults from /proc/stat and
//! /proc/vmstat, read by exec'ing `cat` three times: the difference of the
//! first two is one such exec, taken off the op's). For a run, the KVM
//! counters are the last reading before the VM went away (polled every
//! 20 ms), so they leave out the last moments of the teardown. Medians
//! printed, with ratios.
//!
//! With BASELINE_CONFIG (a kata-like runtime config naming, say, an older
//! guest kernel and VMM), a fourth flavour runs kata-like from a template
//! with that config, for before/after figures in the same run:
//!
//!   cargo run --release -p kata-like-tests --bin bench_ops -- ROUNDS BASELINE_CONFIG
//!
//! Absolute times measure the nested emulator; compare the ratios.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant};

use test_infra::bench::finite_median;
use test_infra::containerd::{Containerd, IMAGE, RUNTIME};

/// The KVM counters reported, as KVM_GET_STATS_FD names them.
const KVM_COUNTERS: [&str; 7] =
    ["exits", "mmio_exits", "io_exits", "halt_exits", "irq_injections", "signal_exits", "insn_emulation"];
/// The guest counters reported: (file, key, label).
const GUEST_COUNTERS: [(&str, &str, &str); 5] = [
    ("stat", "ctxt", "context switches"),
    ("stat", "intr", "interrupts"),
    ("stat", "processes", "forks"),
    ("vmstat", "pgfault", "page faults"),
    ("vmstat", "pgmajfault", "major faults"),
];

type Counts = BTreeMap<String, i64>;

#[derive(Clone, Debug, PartialEq)]
enum Flavour {
    Runc,
    Template,
    Cold,
    /// From a template, with this runtime config.
    Baseline(String),
}

impl Flavour {
    fn name(&self) -> &'static str {
        match self {
            Flavour::Runc => "runc",
            Flavour::Template => "kata-like, template",
            Flavour::Cold => "kata-like, cold",
            Flavour::Baseline(_) => "baseline, template",
        }
    }

    fn ctr_flags(&self, c: &Containerd) -> Vec<String> {
        match self {
            Flavour::Runc => vec![],
            Flavour::Template => vec!["--runtime".into(), RUNTIME.into()],
            Flavour::Cold => vec![
                "--runtime".into(),
                RUNTIME.into(),
                "--runtime-config-path".into(),
                c.cold_config().display().to_string(),
            ],
            Flavour::Baseline(config) => {
                vec!["--runtime".into(), RUNTIME.into(), "--runtime-config-path".into(), config.clone()]
            }
        }
    }
}

#[derive(Debug, Default)]
struct Sample {
    secs: f64,
    kvm: Option<Counts>,
    guest: Option<Counts>,
}

/// KVM's counters of the VM of sandbox `id`, from its VMM's control socket.
fn read_kvm(c: &Containerd, id: &str) -> Option<Counts> {
    let socket = c.kata_state.join(id).join("vmm").join("api.sock");
    let response =
        kata_like_vmm::api::call(&socket, &kata_like_vmm::api::Request::Stats, Duration::from_secs(5)).ok()?;
    let stats = response.stats?;
    KVM_COUNTERS.iter().map(|name| Some((name.to_string(), i64::try_from(*stats.get(*name)?).ok()?))).collect()
}

/// `after − before`, for the counters both readings have.
fn diff(after: &Counts, before: &Counts) -> Counts {
    after.iter().filter_map(|(k, v)| Some((k.clone(), v - before.get(k)?))).collect()
}

fn ctr_ok(c: &Containerd, args: &[&str]) -> Result<String, String> {
    let out = c.ctr(args).map_err(|e| format!("ctr {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("ctr {args:?}: {}\n{}", String::from_utf8_lossy(&out.stderr), c.log_tail()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ctr run --rm … /bin/true`; for kata-like, the VM's KVM counters are
/// polled while it runs and the last reading kept.
fn run_op(c: &Containerd, flavour: &Flavour, id: &str) -> Result<Sample, String> {
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    args.extend(flavour.ctr_flags(c));
    args.extend([IMAGE.into(), id.into(), "/bin/true".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = Instant::now();
    let mut child: Child = c.spawn_ctr(&args)?;
    let mut last = None;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if *flavour != Flavour::Runc {
            if let Some(counts) = read_kvm(c, id) {
                last = Some(counts);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = start.elapsed().as_secs_f64();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        return Err(format!("{}: ctr run failed ({status}): {err}", flavour.name()));
    }
    Ok(Sample { secs, kvm: last, guest: None })
}

/// The guest's counters, read by exec'ing `cat` in container `id`. Each
/// counter its kernel has: an older guest kernel without, say,
/// `CONFIG_VM_EVENT_COUNTERS` still reports its context switches.
fn guest_counts(c: &Containerd, id: &str, exec_id: &str) -> Option<Counts> {
    let text = ctr_ok(c, &["task", "exec", "--exec-id", exec_id, id, "cat", "/proc/stat", "/proc/vmstat"]).ok()?;
    let counts: Counts = GUEST_COUNTERS
        .iter()
        .filter_map(|(_, key, label)| {
            let line = text.lines().find(|l| l.split_whitespace().next() == Some(key))?;
            let v = line.split_whitespace().nth(1)?.parse().ok()?;
            Some((label.to_string(), v))
        })
        .collect();
    (!counts.is_empty()).then_some(counts)
}

/// An exec of /bin/true in a running container, with its counters.
fn exec_op(c: &Containerd, flavour: &Flavour, id: &str) -> Result<Sample, String> {
    let mut args: Vec<String> = vec!["run".into(), "-d".into()];
    args.extend(flavour.ctr_flags(c));
    args.extend([IMAGE.into(), id.into(), "sleep".into(), "100000".into()]);
    ctr_ok(c, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let result = (|| {
        ctr_ok(c, &["task", "exec", "--exec-id", "warm", id, "/bin/true"])?;
        let kata = *flavour != Flavour::Runc;
        let (g1, g2) = if kata { (guest_counts(c, id, "g1"), guest_counts(c, id, "g2")) } else { (None, None) };
        let before = if kata { read_kvm(c, id) } else { None };
        let start = Instant::now();
        ctr_ok(c, &["task", "exec", "--exec-id", "timed", id, "/bin/true"])?;
        let secs = start.elapsed().as_secs_f64();
        let after = if kata { read_kvm(c, id) } else { None };
        let g3 = if kata { guest_counts(c, id, "g3") } else { None };
        let kvm = before.zip(after).map(|(b, a)| diff(&a, &b));
        // The op's share: (g3 − g2) minus one `cat` exec (g2 − g1).
        let guest = match (g1, g2, g3) {
            (Some(g1), Some(g2), Some(g3)) => {
                let cat = diff(&g2, &g1);
                Some(diff(&diff(&g3, &g2), &cat))
            }
            _ => None,
        };
        Ok(Sample { secs, kvm, guest })
    })();
    let _ = c.ctr(&["task", "kill", "-s", "KILL", id]);
    for _ in 0..300 {
        if c.ctr(&["task", "rm", id]).is_ok_and(|o| o.status.success()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = c.ctr(&["container", "rm", id]);
    result
}

/// Each counter's median over the samples that have it.
fn median_counts(samples: &[Sample], pick: fn(&Sample) -> Option<&Counts>) -> Counts {
    let keys: BTreeSet<&String> = samples.iter().filter_map(pick).flat_map(|c| c.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let values = samples.iter().filter_map(pick).filter_map(|c| c.get(k).map(|v| *v as f64)).collect();
            finite_median(values).map(|m| (k.clone(), m as i64))
        })
        .collect()
}

fn main() {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let baseline = std::env::args().nth(2);
    let c = Containerd::start().unwrap_or_else(|e| panic!("{e}"));
    let mut flavours = vec![Flavour::Runc, Flavour::Template, Flavour::Cold];
    if let Some(config) = &baseline {
        flavours.push(Flavour::Baseline(config.clone()));
    }
    // The first templated sandbox of a config builds its template: not timed.
    for (i, f) in flavours.iter().enumerate().filter(|(_, f)| matches!(f, Flavour::Template | Flavour::Baseline(_))) {
        run_op(&c, f, &format!("warm-{i}")).unwrap_or_else(|e| panic!("{e}"));
    }

    let mut runs: Vec<Vec<Sample>> = flavours.iter().map(|_| Vec::new()).collect();
    let mut execs: Vec<Vec<Sample>> = flavours.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        for (i, f) in flavours.iter().enumerate() {
            let run = run_op(&c, f, &format!("run-{i}-{round}")).unwrap_or_else(|e| panic!("{e}"));
            eprintln!("round {round} {}: run {:.2} s", f.name(), run.secs);
            runs[i].push(run);
            let exec = exec_op(&c, f, &format!("exec-{i}-{round}")).unwrap_or_else(|e| panic!("{e}"));
            eprintln!("round {round} {}: exec {:.2} s", f.name(), exec.secs);
            execs[i].push(exec);
        }
    }

    let secs = |s: &[Sample]| finite_median(s.iter().map(|x| x.secs).collect());
    let fmt = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.2} s"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    };
    let names: Vec<&str> = flavours.iter().map(Flavour::name).collect();
    let with_baseline = baseline.is_some();
    println!(
        "\n| operation (median of {rounds}) | {} | template / runc | cold / template |{}",
        names.join(" | "),
        if with_baseline { " template / baseline |" } else { "" }
    );
    println!("|---|{}", "---|".repeat(names.len() + 2 + usize::from(with_baseline)));
    for (name, samples) in [("`ctr run --rm IMAGE ID /bin/true`", &runs), ("`ctr task exec ID /bin/true`", &execs)] {
        let times: Vec<Option<f64>> = samples.iter().map(|s| secs(s)).collect();
        let cells: Vec<String> = times.iter().map(|t| fmt(*t)).collect();
        let vs_baseline = if with_baseline { format!(" {} |", ratio(times[1], times[3])) } else { String::new() };
        println!(
            "| {name} | {} | {} | {} |{vs_baseline}",
            cells.join(" | "),
            ratio(times[1], times[0]),
            ratio(times[2], times[1])
        );
    }

    let kata: Vec<usize> = (1..flavours.len()).collect();
    println!("\nKVM counters of the VM per operation (VMM control socket, summed over vCPUs; medians):\n");
    let header: Vec<String> = ["run", "exec"]
        .iter()
        .flat_map(|op| kata.iter().map(|&i| format!("{op}, {}", names[i])).collect::<Vec<_>>())
        .collect();
    println!("| counter | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(header.len()));
    let columns: Vec<Counts> = kata
        .iter()
        .map(|&i| median_counts(&runs[i], |x| x.kvm.as_ref()))
        .chain(kata.iter().map(|&i| median_counts(&execs[i], |x| x.kvm.as_ref())))
        .collect();
    for name in KVM_COUNTERS {
        let cells: Vec<String> = columns.iter().map(|c| c.get(name).map_or("n/a".into(), |v| v.to_string())).collect();
        println!("| {name} | {} |", cells.join(" | "));
    }

    println!("\nGuest counters per exec (the guest's /proc; medians):\n");
    let header: Vec<&str> = kata.iter().map(|&i| names[i]).collect();
    println!("| counter | {} |", header.join(" | "));
    println!("|---|{}", "---|".repeat(header.len()));
    let columns: Vec<Counts> = kata.iter().map(|&i| median_counts(&execs[i], |x| x.guest.as_ref())).collect();
    for (_, _, label) in GUEST_COUNTERS {
        let cells: Vec<String> = columns.iter().map(|c| c.get(label).map_or("n/a".into(), |v| v.to_string())).collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
}
