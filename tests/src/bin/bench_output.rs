//! Large-output check and throughput benchmark for docs/benchmarks.md:
//! `ctr run --rm IMAGE ID seq 1 N` with at least MB megabytes of output,
//! through runc and through kata-like in one private containerd.
//!
//!   cargo run --release -p kata-like-tests --bin bench_output -- [MB [BASELINE_CONFIG]]
//!
//! With BASELINE_CONFIG (a kata-like runtime config naming, say, an older
//! guest kernel and VMM), the same run goes a third time through kata-like
//! with that config, for a before/after ratio in the same run.
//!
//! Every byte ctr prints is checked, as it streams, against what `seq`
//! must print (complete, in order, nothing after the last line), and the
//! peak resident memory of the kata-like shim and VMM is sampled during the
//! run: bounded buffers show that back-pressure reaches the guest instead
//! of output piling up on the host. Exits non-zero if any check fails.
//!
//! Absolute times measure the nested emulator; compare the ratio.

use std::io::Read;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use test_infra::containerd::{Containerd, IMAGE, RUNTIME};

/// Checks a stream against `seq 1 last` chunk by chunk.
struct SeqCheck {
    next: u64,
    last: u64,
    line: Vec<u8>,
    bytes: u64,
    error: Option<String>,
}

impl SeqCheck {
    fn new(last: u64) -> Self {
        SeqCheck { next: 1, last, line: Vec::new(), bytes: 0, error: None }
    }

    fn feed(&mut self, chunk: &[u8]) {
        for &b in chunk {
            self.bytes += 1;
            if self.error.is_some() {
                continue;
            }
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            if self.next > self.last {
                self.error = Some(format!("output continues after line {} at byte {}", self.last, self.bytes));
            } else if self.line != self.next.to_string().as_bytes() {
                self.error = Some(format!(
                    "line {} is {:?} at byte {}",
                    self.next,
                    String::from_utf8_lossy(&self.line),
                    self.bytes
                ));
            }
            self.next += 1;
            self.line.clear();
        }
    }

    fn finish(self) -> Result<u64, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if !self.line.is_empty() || self.next != self.last + 1 {
            return Err(format!("output stops at line {} of {} ({} bytes)", self.next - 1, self.last, self.bytes));
        }
        Ok(self.bytes)
    }
}

/// The smallest N whose `seq 1 N` output has at least `bytes` bytes.
fn lines_for(bytes: u64) -> u64 {
    let (mut n, mut total) = (0u64, 0u64);
    while total < bytes {
        n += 1;
        total += n.to_string().len() as u64 + 1;
    }
    n
}

/// Resident KiB (VmRSS) of the processes whose command line contains all
/// of `needles`, summed.
fn rss_kib(needles: &[&str]) -> u64 {
    test_infra::processes_with(needles)
        .into_iter()
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Runs `ctr run --rm [EXTRA] IMAGE ID seq 1 LAST`, checking its output;
/// returns (seconds, bytes).
fn run(c: &Containerd, extra: &[&str], id: &str, last: u64) -> Result<(f64, u64), String> {
    let last_arg = last.to_string();
    let mut args = vec!["run", "--rm"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, id, "seq", "1", &last_arg]);
    let start = Instant::now();
    let mut child = c
        .ctr_command(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ctr: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut check = SeqCheck::new(last);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stdout.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => check.feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading ctr's stdout: {e}")),
        }
    }
    let status = child.wait().map_err(|e| format!("ctr: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!("ctr {args:?} failed ({status}): {err}\n{}", c.log_tail()));
    }
    Ok((secs, check.finish()?))
}

fn main() {
    let mb: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100);
    let baseline = std::env::args().nth(2);
    let last = lines_for(mb * 1_000_000);
    let c = Containerd::start().unwrap_or_else(|e| panic!("{e}"));

    let (runc_secs, runc_bytes) = run(&c, &[], "out-r", last).unwrap_or_else(|e| panic!("runc: {e}"));
    eprintln!("runc: {runc_bytes} bytes in {runc_secs:.1} s");

    // Warm-ups, not timed: the first sandbox of a config builds its VM
    // template.
    run(&c, &["--runtime", RUNTIME], "warm-k", 10).unwrap_or_else(|e| panic!("kata-like warm-up: {e}"));
    let baseline_flags = baseline.as_deref().map(|config| ["--runtime", RUNTIME, "--runtime-config-path", config]);
    if let Some(flags) = &baseline_flags {
        run(&c, flags, "warm-b", 10).unwrap_or_else(|e| panic!("kata-like, baseline warm-up: {e}"));
    }

    // Sample the kata-like shim and VMM while the output streams.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let (sock, state) = (c.socket().display().to_string(), c.kata_state.join("out-k").display().to_string());
        std::thread::spawn(move || {
            let (mut shim, mut vmm) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                shim = shim.max(rss_kib(&["-id out-k", &sock]));
                vmm = vmm.max(rss_kib(&["kata-like-vmm", &state]));
                std::thread::sleep(Duration::from_millis(500));
            }
            (shim, vmm)
        })
    };
    let ours = run(&c, &["--runtime", RUNTIME], "out-k", last);
    done.store(true, Ordering::Relaxed);
    let (shim_kib, vmm_kib) = sampler.join().unwrap_or((0, 0));
    let (secs, bytes) = ours.unwrap_or_else(|e| panic!("kata-like: {e}"));
    eprintln!("kata-like: {bytes} bytes in {secs:.1} s");
    let base = baseline_flags.as_ref().map(|flags| {
        let (s, b) = run(&c, flags, "out-b", last).unwrap_or_else(|e| panic!("kata-like, baseline: {e}"));
        eprintln!("kata-like, baseline config: {b} bytes in {s:.1} s");
        s
    });

    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!("\n`ctr run --rm IMAGE ID seq 1 {last}` ({bytes} bytes, checked line by line)\n");
    println!("| runtime | seconds | MiB/s |\n|---|---|---|");
    println!("| runc | {runc_secs:.1} | {:.1} |", mib / runc_secs);
    println!("| kata-like | {secs:.1} | {:.2} |", mib / secs);
    if let (Some(base), Some(config)) = (base, &baseline) {
        println!("| kata-like, baseline ({config}) | {base:.1} | {:.2} |", mib / base);
    }
    println!("\nkata-like / runc time: {:.0}×", secs / runc_secs);
    if let Some(base) = base {
        println!("kata-like / baseline time: {:.2}", secs / base);
    }
    println!(
        "peak RSS during the run: shim {:.1} MiB, VMM {:.1} MiB (guest RAM included)",
        shim_kib as f64 / 1024.0,
        vmm_kib as f64 / 1024.0
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(n: u64) -> String {
        (1..=n).map(|i| format!("{i}\n")).collect()
    }

    #[test]
    fn accepts_exact_output_in_any_chunking() {
        let text = seq(1000);
        for size in [1, 7, 4096] {
            let mut check = SeqCheck::new(1000);
            text.as_bytes().chunks(size).for_each(|c| check.feed(c));
            assert_eq!(check.finish(), Ok(text.len() as u64));
        }
    }

    #[test]
    fn rejects_missing_reordered_and_extra_output() {
        let mut short = SeqCheck::new(10);
        short.feed(seq(9).as_bytes());
        assert!(short.finish().unwrap_err().contains("stops at line 9 of 10"));

        let mut swapped = SeqCheck::new(3);
        swapped.feed(b"1\n3\n2\n");
        assert!(swapped.finish().unwrap_err().contains("line 2 is \"3\""));

        let mut extra = SeqCheck::new(2);
        extra.feed(b"1\n2\n3\n");
        assert!(extra.finish().unwrap_err().contains("continues after line 2"));

        let mut torn = SeqCheck::new(2);
        torn.feed(b"1\n2");
        assert!(torn.finish().is_err());
    }

    #[test]
    fn line_count_covers_the_requested_size() {
        assert_eq!(lines_for(2), 1);
        assert_eq!(lines_for(18), 9);
        assert_eq!(lines_for(19), 10);
        let n = lines_for(100_000_000);
        assert!(seq_len(n) >= 100_000_000 && seq_len(n - 1) < 100_000_000);
    }

    fn seq_len(n: u64) -> u64 {
        (1..=n).map(|i| i.to_string().len() as u64 + 1).sum()
    }
}
