//! containerd benchmark for docs/benchmarks.md: our runtime beside runc in
//! one private containerd, runs interleaved.
//!
//!   cargo run --release -p kata-like-tests --bin bench_ctr -- [RUNS]
//!
//! * `ctr run --rm IMAGE ID /bin/true` wall time, runc vs kata-like
//!   restoring a VM template (the default) vs kata-like booting cold (a
//!   second private containerd whose runtime config has `vm_templates =
//!   false`), medians and ratios, and for kata-like where the time goes,
//!   from the shim's log: shim start, virtiofsd + VMM spawn, VMM → first
//!   KVM_RUN, → guest init (boot timer; none when restored), → agent
//!   answering, guest set-up, container create, start, and exit + teardown.
//! * Host memory of one idle sandbox (`sleep` as the container): PSS of
//!   shim + VMM + virtiofsd from /proc/PID/smaps, guest RAM (the VMM's
//!   `kata-like-guest-ram` memfd) shown apart; runc's shim + container
//!   beside it.
//! * `ctr task exec ID /bin/true` wall time in those idle containers.
//!
//! Absolute times measure the nested emulator; compare the ratios.

use std::path::Path;
use std::time::{Duration, Instant};

use test_infra::bench::{median, pss};
use test_infra::containerd::{Containerd, COLD_BOOT, IMAGE, RUNTIME};

/// Runs ctr and returns its wall time in seconds; panics with its output
/// on failure.
fn timed(c: &Containerd, args: &[&str]) -> f64 {
    let start = Instant::now();
    let out = c.ctr(args).expect("ctr");
    let secs = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "ctr {args:?}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.log_tail()
    );
    secs
}

/// Seconds since the epoch of a logrus `time="2026-11-22T02:42:13.612729307Z"` field.
fn log_time(line: &str) -> Option<f64> {
    let t = line.split("time=\"").nth(1)?.split('"').next()?;
    let (date, clock) = t.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut c = clock.split(':');
    let (h, min, s) = (c.next()?.parse::<f64>().ok()?, c.next()?.parse::<f64>().ok()?, c.next()?.parse::<f64>().ok()?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

/// `key N us` from a log line, in seconds.
fn us_field(line: &str, key: &str) -> Option<f64> {
    let rest = line.split(key).nth(1)?;
    rest.split_whitespace().next()?.trim_end_matches(',').parse::<f64>().ok().map(|us| us / 1e6)
}

/// The phases of one kata-like run, in seconds, from the log lines written
/// after byte `from` of containerd's log (shim logs land there).
fn phases(log: &Path, from: usize, id: &str, ctr_start: f64, ctr_end: f64) -> Option<Vec<f64>> {
    let text = std::fs::read_to_string(log).ok()?;
    let lines: Vec<&str> = text.get(from..)?.lines().collect();
    let at = |needle: &str| lines.iter().find(|l| l.contains(needle)).and_then(|l| log_time(l));
    let shim_up = at("Shim successfully started")?;
    let request = at(&format!("phase create-request {id}"))?;
    let created = at(&format!("phase created {id}"))?;
    let running = at(&format!("phase running {id}"))?;
    let ready = lines.iter().find(|l| l.contains("sandbox VM ready"))?;
    let (kvm, init, agent) =
        (us_field(ready, "first KVM_RUN ")?, us_field(ready, "guest init ")?, us_field(ready, "agent ")?);
    // A restored VM has no boot timer: its guest was running already.
    let init = if init > 0.0 { init } else { kvm };
    let (before_vmm, setup) = (us_field(ready, "before VMM ")?, us_field(ready, "guest set-up ")?);
    let boot_total = before_vmm + agent + setup;
    Some(vec![
        shim_up - ctr_start,
        request - shim_up,
        before_vmm,
        kvm,
        init - kvm,
        agent - init,
        setup,
        (created - request) - boot_total,
        running - created,
        ctr_end - running,
    ])
}

const PHASES: [&str; 10] = [
    "ctr → shim serving (shim start)",
    "shim serving → Create request",
    "virtiofsd start + VMM spawn",
    "VMM spawn → first KVM_RUN",
    "first KVM_RUN → guest init (boot timer)",
    "guest init → agent answering",
    "guest set-up (SetupSandbox, virtio-fs mount)",
    "rootfs share + CreateContainer",
    "StartContainer",
    "exit, output drain, VM teardown, ctr exit",
];

/// Processes whose command line has all of `needles`: (pid, ppid, name).
fn procs(needles: &[&str]) -> Vec<(u32, u32, String)> {
    test_infra::processes()
        .into_iter()
        .filter(|(_, cmd)| needles.iter().all(|n| cmd.contains(n)))
        .filter_map(|(pid, cmd)| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
            let name = Path::new(cmd.split(' ').next()?).file_name()?.to_string_lossy().into_owned();
            Some((pid, ppid, name))
        })
        .collect()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn main() {
    let runs: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let c = Containerd::start().unwrap_or_else(|e| panic!("{e}"));
    let cold = Containerd::start_with_runtime_config(COLD_BOOT).unwrap_or_else(|e| panic!("{e}"));
    // The template is built on first use: once, before any clock.
    timed(&c, &["run", "--rm", "--runtime", RUNTIME, IMAGE, "warm-up", "/bin/true"]);
    let mut runc = Vec::new();
    let mut ours: [Vec<f64>; 2] = Default::default();
    let mut breakdown = [vec![Vec::new(); PHASES.len()], vec![Vec::new(); PHASES.len()]];
    let epoch =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    for i in 0..runs {
        runc.push(timed(&c, &["run", "--rm", IMAGE, &format!("r{i}"), "/bin/true"]));
        for (k, (containerd, prefix)) in [(&c, "t"), (&cold, "k")].into_iter().enumerate() {
            let log = containerd.log_path();
            let from = std::fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
            let id = format!("{prefix}{i}");
            let start = epoch();
            let secs = timed(containerd, &["run", "--rm", "--runtime", RUNTIME, IMAGE, &id, "/bin/true"]);
            ours[k].push(secs);
            match phases(&log, from, &id, start, start + secs) {
                Some(p) => p.into_iter().enumerate().for_each(|(n, v)| breakdown[k][n].push(v)),
                None => eprintln!("run {id}: phase lines missing from {}", log.display()),
            }
        }
        eprintln!("run {i}: runc {:.2} s, kata-like template {:.1} s, cold {:.1} s", runc[i], ours[0][i], ours[1][i]);
    }
    let r = median(runc);
    let [t, k] = ours.map(median);
    println!("\n`ctr run --rm IMAGE ID /bin/true`, medians of {runs} interleaved runs\n");
    println!(
        "| runc | kata-like, template | kata-like, cold | template / runc | cold / template |\n|---|---|---|---|---|"
    );
    println!("| {r:.2} s | {t:.1} s | {k:.1} s | {:.0} | {:.1} |", t / r, k / t);
    println!("\nkata-like breakdown (medians)\n\n| phase | template (s) | cold (s) |\n|---|---|---|");
    let [bt, bk] = breakdown;
    for ((name, t), k) in PHASES.iter().zip(bt).zip(bk) {
        println!("| {name} | {:.2} | {:.2} |", median(t), median(k));
    }
    drop(cold);

    // One idle sandbox of each, then memory and exec latency.
    timed(&c, &["run", "-d", "--runtime", RUNTIME, IMAGE, "idle-k", "sleep", "100000"]);
    timed(&c, &["run", "-d", IMAGE, "idle-r", "sleep", "100000"]);
    std::thread::sleep(Duration::from_secs(10));
    let sock = c.socket().display().to_string();
    let state = c.kata_state.join("idle-k").display().to_string();
    let mut rows = Vec::new();
    let mut ours_total = (0, 0);
    for (pid, _, name) in procs(&["-id idle-k", &sock]).into_iter().chain(procs(&[&state])) {
        let (all, guest) = pss(pid);
        ours_total = (ours_total.0 + all, ours_total.1 + guest);
        rows.push(format!("| kata-like | {name} ({pid}) | {} | {} |", mib(all), mib(guest)));
    }
    let mut runc_total = 0;
    for (pid, _, name) in procs(&["-id idle-r", &sock]) {
        let mut members = vec![(pid, name)];
        members.extend(procs(&["sleep 100000"]).into_iter().filter(|p| p.1 == pid).map(|p| (p.0, p.2)));
        for (pid, name) in members {
            let (all, _) = pss(pid);
            runc_total += all;
            rows.push(format!("| runc | {name} ({pid}) | {} | – |", mib(all)));
        }
    }
    println!("\nIdle sandbox memory (PSS)\n\n| runtime | process | PSS | of it guest RAM |\n|---|---|---|---|");
    rows.iter().for_each(|r| println!("{r}"));
    println!(
        "| **kata-like total** | shim + VMM + virtiofsd | {} | {} (without guest RAM: {}) |",
        mib(ours_total.0),
        mib(ours_total.1),
        mib(ours_total.0 - ours_total.1)
    );
    println!("| **runc total** | shim + container | {} | – |", mib(runc_total));

    let (mut er, mut ek) = (Vec::new(), Vec::new());
    for i in 0..runs {
        er.push(timed(&c, &["task", "exec", "--exec-id", &format!("e{i}"), "idle-r", "/bin/true"]));
        ek.push(timed(&c, &["task", "exec", "--exec-id", &format!("e{i}"), "idle-k", "/bin/true"]));
    }
    let (er, ek) = (median(er), median(ek));
    println!(
        "\n`ctr task exec ID /bin/true`, medians of {runs}\n\n| runc | kata-like | kata-like / runc |\n|---|---|---|"
    );
    println!("| {er:.2} s | {ek:.1} s | {:.0} |", ek / er);
    for id in ["idle-k", "idle-r"] {
        let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    }
    std::thread::sleep(Duration::from_secs(5));
    for id in ["idle-k", "idle-r"] {
        let _ = c.ctr(&["task", "delete", id]);
        let _ = c.ctr(&["container", "delete", id]);
    }
}
