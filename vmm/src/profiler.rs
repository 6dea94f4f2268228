//! A guest RIP sampler for finding where boot time goes (`--profile-rip`).
//!
//! A thread sends a real-time signal to every vCPU thread at a fixed
//! interval; KVM_RUN returns EINTR, the vCPU records its RIP and re-enters.
//! The report names the kernel functions that took the most samples, overall
//! and per time slice. On nested hosts, where guest kernel code is emulated,
//! this is the cheapest way to see what dominates boot.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock;
use crate::exit::ExitSignal;
use crate::jail::seccomp::{SeccompMode, ThreadKind};
use crate::symbols::KernelSymbols;

/// One RIP sample.
#[derive(Clone, Copy, Debug)]
struct Sample {
    us: u64,
    vcpu: u8,
    rip: u64,
}

/// Collects RIP samples from the vCPU threads.
#[derive(Debug)]
pub struct RipSampler {
    interval: Duration,
    threads: Mutex<Vec<libc::pthread_t>>,
    samples: Mutex<Vec<Sample>>,
}

impl RipSampler {
    /// A sampler firing every `interval`. Installs the kick signal handler.
    pub fn new(interval: Duration) -> io::Result<Arc<Self>> {
        crate::pause::install_kick_handler()?;
        Ok(Arc::new(RipSampler { interval, threads: Mutex::new(Vec::new()), samples: Mutex::new(Vec::new()) }))
    }

    /// Called by each vCPU thread before its first KVM_RUN.
    pub fn register_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(me);
    }

    /// Records a sample from vCPU `vcpu`.
    pub fn record(&self, vcpu: u8, rip: u64) {
        let us = clock::since_start().as_micros() as u64;
        self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Sample { us, vcpu, rip });
    }

    /// Starts the thread that kicks the vCPUs until the VM exits.
    pub fn start(self: &Arc<Self>, exit: Arc<ExitSignal>, seccomp: SeccompMode) -> io::Result<()> {
        let sampler = self.clone();
        std::thread::Builder::new().name("rip-sampler".into()).spawn(move || {
            if let Err(e) = crate::jail::seccomp::install(ThreadKind::Sampler, seccomp) {
                tracing::warn!(error = %e, "RIP sampler not started");
                return;
            }
            while exit.reason().is_none() {
                std::thread::sleep(sampler.interval);
                let threads = sampler.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                for thread in threads {
                    // The vCPU threads live until the process exits.
                    crate::pause::kick(thread);
                }
            }
        })?;
        Ok(())
    }

    /// Writes the report: top symbols overall and per time slice.
    pub fn write_report(&self, path: &Path, symbols: Option<&KernelSymbols>) -> io::Result<()> {
        let samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let name = |rip: u64| match symbols.and_then(|s| s.lookup(rip)) {
            Some(sym) => sym.split('+').next().unwrap_or_default().to_string(),
            None if rip < 0xffff_8000_0000_0000 => "<user space>".to_string(),
            None => format!("{rip:#x}"),
        };
        let mut out = io::BufWriter::new(std::fs::File::create(path)?);
        writeln!(out, "# guest RIP samples every {:?}: {} samples", self.interval, samples.len())?;
        writeln!(out, "\n## overall")?;
        for (sym, count) in top(samples.iter().map(|s| name(s.rip)), 60) {
            writeln!(out, "{count:7} {:5.1}%  {sym}", 100.0 * count as f64 / samples.len().max(1) as f64)?;
        }
        writeln!(out, "\n## per second (top 4)")?;
        let mut by_second: Vec<(u64, Vec<&Sample>)> = Vec::new();
        for sample in &samples {
            let second = sample.us / 1_000_000;
            match by_second.last_mut() {
                Some((s, list)) if *s == second => list.push(sample),
                _ => by_second.push((second, vec![sample])),
            }
        }
        for (second, list) in by_second {
            let line: Vec<String> = top(list.iter().map(|s| name(s.rip)), 4)
                .into_iter()
                .map(|(sym, count)| format!("{sym} {}%", 100 * count / list.len()))
                .collect();
            let vcpus: std::collections::BTreeSet<u8> = list.iter().map(|s| s.vcpu).collect();
            writeln!(out, "{second:4}s vcpus {vcpus:?}: {}", line.join(", "))?;
        }
        out.flush()
    }
}

fn top(names: impl Iterator<Item = String>, n: usize) -> Vec<(String, usize)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for name in names {
        *counts.entry(name).or_default() += 1;
    }
    let mut sorted: Vec<(String, usize)> = counts.into_iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sorted.truncate(n);
    sorted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_counts_and_orders() {
        let names = ["a", "b", "a", "c", "a", "b"].into_iter().map(String::from);
        assert_eq!(top(names, 2), vec![("a".to_string(), 3), ("b".to_string(), 2)]);
    }
}
