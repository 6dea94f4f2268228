//! Boot benchmark for docs/benchmarks.md: kata-like-vmm and QEMU microvm
//! boot the same kernel and initramfs, interleaved, on this machine.
//!
//!   cargo run --release -p kata-like-tests --bin bench_boot -- [RUNS] [BASELINE_VMM]
//!
//! BASELINE_VMM (another kata-like-vmm build, e.g. the dynamically linked
//! `target/release/kata-like-vmm`) adds a column booted in the same
//! interleave, with ours/baseline ratios.
//!
//! Per run and VMM (medians printed, with kata-like/QEMU ratios):
//! * spawn → first KVM_RUN: CLOCK_MONOTONIC before spawn vs. at the first
//!   KVM_RUN ioctl, recorded by an LD_PRELOAD probe (tests/bench/kvm_run_probe.c)
//!   in both VMMs alike;
//! * spawn → init started: arrival of the agent's first console line on the
//!   VMM's serial output (both VMMs); kata-like's boot-timer device too;
//! * spawn → agent answered (kata-like only: QEMU has no vsock device here,
//!   /dev/vhost-vsock is absent);
//! * RSS: total, guest RAM mapping, and the rest ("VMM overhead"), from
//!   /proc/PID/smaps once the guest's init runs.
//!
//! Absolute times measure the nested emulator; compare the ratios.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kata_like_protocol::AgentClient;
use kata_like_runtime::vm::log_value;
use kata_like_vmm::clock::monotonic_ns;
use test_infra::bench::finite_median;
use test_infra::Artifacts;

const MEMORY_MIB: u64 = 128;
const MARKER: &str = "kata-like-agent: init started";
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// (total RSS, RSS of guest RAM) in KiB. Guest RAM is the given host
/// address ranges (kata-like-vmm logs them; its kernel and initrd are file
/// mappings inside them), or else the anonymous mapping of the VM's size
/// (QEMU, which may round it up a little).
fn rss_split(pid: u32, guest_ranges: &[(u64, u64)]) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut guest, mut size, mut in_guest) = (0, 0, 0u64, false);
    let mut is_anon = false;
    let kib = |line: &str| line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
            // Mapping header: "start-end perms offset dev inode [path]".
            let start = u64::from_str_radix(start, 16).unwrap_or(0);
            let end = u64::from_str_radix(end, 16).unwrap_or(0);
            in_guest = guest_ranges.iter().any(|(s, e)| start >= *s && end <= *e);
            is_anon = line.split_whitespace().count() <= 5;
            size = 0;
        } else if line.starts_with("Size:") {
            size = kib(line);
        } else if line.starts_with("Rss:") {
            let rss = kib(line);
            total += rss;
            let qemu_ram =
                guest_ranges.is_empty() && is_anon && (MEMORY_MIB * 1024..=(MEMORY_MIB + 4) * 1024).contains(&size);
            if in_guest || qemu_ram {
                guest += rss;
            }
        }
    }
    (total, guest)
}

/// Guest RAM host ranges from kata-like-vmm's "guest RAM" log lines.
fn guest_ranges(log: &str) -> Vec<(u64, u64)> {
    let hex = |line: &str, key: &str| {
        let at = line.find(key)? + key.len();
        let digits = line[at..].trim_start_matches("0x").split(|c: char| !c.is_ascii_hexdigit()).next()?;
        u64::from_str_radix(digits, 16).ok()
    };
    log.lines()
        .filter(|l| l.contains("guest RAM"))
        .filter_map(|l| Some((hex(l, "host_start=")?, hex(l, "host_end=")?)))
        .collect()
}

#[derive(Clone, Debug, Default)]
struct Run {
    first_kvm_run_ms: Option<f64>,
    init_console_ms: Option<f64>,
    boot_timer_ms: Option<f64>,
    agent_ms: Option<f64>,
    rss_total_kib: u64,
    rss_guest_kib: u64,
}

fn probe_ms(out: &Path, spawned_ns: u64) -> Option<f64> {
    let text = std::fs::read_to_string(out).ok()?;
    let ns: u64 = text.strip_prefix("first_kvm_run_ns ")?.trim().parse().ok()?;
    Some(ns.saturating_sub(spawned_ns) as f64 / 1e6)
}

/// Watches the child's stdout (the guest serial console) for MARKER.
fn watch_console(child: &mut Child) -> mpsc::Receiver<u64> {
    let (tx, rx) = mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(MARKER) {
                    let _ = tx.send(monotonic_ns());
                }
            }
        });
    }
    rx
}

fn kata_like_run(art: &Artifacts, probe: &Path, dir: &Path) -> (Run, String) {
    let uds = dir.join("v.sock");
    let probe_out = dir.join("probe-ours");
    // A static VMM writes no probe file: none may be left from a run before.
    let _ = std::fs::remove_file(&probe_out);
    let log = dir.join("vmm.log");
    let spawned = monotonic_ns();
    let mut child = Command::new(&art.vmm)
        .arg("--kernel")
        .arg(&art.kernel)
        .arg("--initrd")
        .arg(&art.initrd)
        .arg("--memory")
        .arg(MEMORY_MIB.to_string())
        .arg("--vsock-uds")
        .arg(&uds)
        .args(["--serial", "stdout"])
        // The LD_PRELOAD probe opens its output file from the vCPU thread,
        // which the default filter (trap) forbids; `log` keeps the same
        // filters in place and lets the probe's calls through.
        .args(["--seccomp", "log"])
        .env("LD_PRELOAD", probe)
        .env("KVM_RUN_PROBE_OUT", &probe_out)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start kata-like-vmm");
    let console = watch_console(&mut child);
    let pid = child.id();
    let mut run = Run::default();
    let ready = AgentClient::wait_ready(&uds, BOOT_TIMEOUT, Duration::from_secs(30), || Ok(()));
    let ready_ns = monotonic_ns();
    if let Ok((client, _)) = ready {
        run.agent_ms = Some(ready_ns.saturating_sub(spawned) as f64 / 1e6);
        let ranges = guest_ranges(&std::fs::read_to_string(&log).unwrap_or_default());
        (run.rss_total_kib, run.rss_guest_kib) = rss_split(pid, &ranges);
        let _ = client.shutdown();
    }
    run.init_console_ms =
        console.recv_timeout(Duration::from_secs(5)).ok().map(|t| t.saturating_sub(spawned) as f64 / 1e6);
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // A static VMM ignores LD_PRELOAD: its own "first KVM_RUN" line (logged
    // just before the first ioctl) stands in for the probe.
    run.first_kvm_run_ms = probe_ms(&probe_out, spawned).or_else(|| {
        log_value(&text, "first KVM_RUN", "monotonic_ns").map(|ns| ns.saturating_sub(spawned) as f64 / 1e6)
    });
    run.boot_timer_ms = log_value(&text, "boot-timer", "us_since_start").map(|us| us as f64 / 1e3);
    let cmdline = text
        .lines()
        .find(|l| l.contains("kernel command line"))
        .and_then(|l| l.split("cmdline=").nth(1))
        .unwrap_or_default()
        .to_string();
    (run, cmdline)
}

fn qemu_run(art: &Artifacts, probe: &Path, dir: &Path, cmdline: &str) -> Run {
    let probe_out = dir.join("probe-qemu");
    // ENVIRONMENT.md's working microvm command line, with our kernel
    // parameters (the same clearcpuid= list: PVM ignores QEMU's -cpu masks
    // for the same leaves). virtio-mmio devices are QEMU's own.
    let cmdline: String =
        cmdline.split_whitespace().filter(|p| !p.starts_with("virtio_mmio.device=")).collect::<Vec<_>>().join(" ");
    let spawned = monotonic_ns();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-enable-kvm", "-M", "microvm,x-option-roms=off,rtc=off,acpi=off"])
        // +xsaveerptr: without it Linux runs fnclex/emms on every FPU restore
        // (AMD's FXSAVE leak workaround), which the nested host cannot
        // emulate; kata-like-vmm's template keeps the bit for the same reason.
        .args([
            "-cpu",
            "qemu64,-cx16,-popcnt,-sse4.1,-sse4.2,-pni,+xsaveerptr",
            "-m",
            &MEMORY_MIB.to_string(),
            "-smp",
            "1",
        ])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&art.kernel)
        .arg("-initrd")
        .arg(&art.initrd)
        .args(["-append", &cmdline])
        .env("LD_PRELOAD", probe)
        .env("KVM_RUN_PROBE_OUT", &probe_out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-system-x86_64");
    let console = watch_console(&mut child);
    let pid = child.id();
    let mut run = Run::default();
    if let Ok(t) = console.recv_timeout(BOOT_TIMEOUT) {
        run.init_console_ms = Some(t.saturating_sub(spawned) as f64 / 1e6);
        // Same moment as ours: the guest's init runs, no vsock client.
        std::thread::sleep(Duration::from_secs(3));
        (run.rss_total_kib, run.rss_guest_kib) = rss_split(pid, &[]);
    }
    let _ = child.kill();
    let _ = child.wait();
    run.first_kvm_run_ms = probe_ms(&probe_out, spawned);
    run
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    v.map_or("n/a".to_string(), |v| format!("{v:.1} {unit}"))
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let baseline_vmm = std::env::args().nth(2).map(PathBuf::from);
    let art = Artifacts::locate().unwrap_or_else(|e| panic!("{e}"));
    let baseline_art = baseline_vmm.map(|vmm| Artifacts { vmm, ..art.clone() });
    let dir = tempfile::tempdir().expect("tmp");
    let probe = dir.path().join("kvm_run_probe.so");
    let source: PathBuf = test_infra::workspace_root().join("tests/bench/kvm_run_probe.c");
    let status =
        Command::new("cc").args(["-shared", "-fPIC", "-O2", "-o"]).arg(&probe).arg(&source).arg("-ldl").status();
    assert!(status.is_ok_and(|s| s.success()), "cannot build {}", source.display());

    let (mut ours, mut baseline, mut qemu) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let (run, cmdline) = kata_like_run(&art, &probe, dir.path());
        eprintln!("run {i} kata-like: {run:?}");
        ours.push(run);
        if let Some(base) = &baseline_art {
            let (run, _) = kata_like_run(base, &probe, dir.path());
            eprintln!("run {i} baseline:  {run:?}");
            baseline.push(run);
        }
        let run = qemu_run(&art, &probe, dir.path(), &cmdline);
        eprintln!("run {i} qemu:      {run:?}");
        qemu.push(run);
    }

    let pick = |runs: &[Run], f: fn(&Run) -> Option<f64>| finite_median(runs.iter().filter_map(f).collect());
    let overhead =
        |r: &Run| Some(r.rss_total_kib.saturating_sub(r.rss_guest_kib) as f64 / 1024.0).filter(|_| r.rss_total_kib > 0);
    let guest = |r: &Run| Some(r.rss_guest_kib as f64 / 1024.0).filter(|_| r.rss_total_kib > 0);
    type Row = (&'static str, fn(&Run) -> Option<f64>, &'static str);
    let rows: [Row; 6] = [
        ("spawn → first KVM_RUN", |r| r.first_kvm_run_ms, "ms"),
        ("spawn → init started (console line)", |r| r.init_console_ms, "ms"),
        ("VMM start → boot-timer marker", |r| r.boot_timer_ms, "ms"),
        ("spawn → agent answered", |r| r.agent_ms, "ms"),
        ("RSS: VMM overhead (total − guest RAM)", overhead, "MiB"),
        ("RSS: guest RAM touched", guest, "MiB"),
    ];
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "n/a".into(),
    };
    let with_baseline = baseline_art.is_some();
    if with_baseline {
        println!("| measure (median of {runs}) | kata-like-vmm | baseline VMM | QEMU microvm | ours / baseline | ours / QEMU |");
        println!("|---|---|---|---|---|---|");
    } else {
        println!("| measure (median of {runs}) | kata-like-vmm | QEMU microvm | kata-like / QEMU |");
        println!("|---|---|---|---|");
    }
    for (name, f, unit) in rows {
        let (a, b, q) = (pick(&ours, f), pick(&baseline, f), pick(&qemu, f));
        if with_baseline {
            let (fa, fb, fq) = (fmt(a, unit), fmt(b, unit), fmt(q, unit));
            println!("| {name} | {fa} | {fb} | {fq} | {} | {} |", ratio(a, b), ratio(a, q));
        } else {
            println!("| {name} | {} | {} | {} |", fmt(a, unit), fmt(q, unit), ratio(a, q));
        }
    }
}
