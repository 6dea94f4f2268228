//! cgroup v2 of a container in the guest: creation with the spec's
//! resources, freeze/thaw (pause), statistics, updates, OOM counters.
//!
//! Inside the VM the spec's `cgroupsPath` has no meaning for the host, so
//! every container gets `<root>/kata-like/<container id>`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

/// The controllers containers get.
const CONTROLLERS: &str = "+cpu +memory +pids";

/// A container's cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("write {value:?} to {}: {e}", path.display()))
}

/// Writes `value` unless the file does not exist (a controller or feature
/// the kernel lacks, e.g. swap accounting).
fn write_optional(path: &Path, value: &str) -> Result<(), String> {
    if !path.exists() {
        tracing::debug!(path = %path.display(), "cgroup file absent; skipped");
        return Ok(());
    }
    write(path, value)
}

fn read_flat_keyed(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (k, v) = line.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// A single-value file; "max" and absent files read as 0.
fn read_value(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

impl Cgroup {
    /// Creates the cgroup of container `id` under `root` (the cgroup2 mount)
    /// and enables the controllers on the way.
    pub fn create(root: &Path, id: &str) -> Result<Cgroup, String> {
        let parent = root.join("kata-like");
        std::fs::create_dir_all(&parent).map_err(|e| format!("create cgroup {}: {e}", parent.display()))?;
        // Enabling controllers is best effort: the host-mode tests run on
        // hierarchies where they are bound elsewhere.
        for dir in [root, parent.as_path()] {
            if let Err(e) = write(&dir.join("cgroup.subtree_control"), CONTROLLERS) {
                tracing::debug!(error = %e, "cannot enable cgroup controllers");
            }
        }
        let path = parent.join(id);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("create cgroup {}: {e}", path.display())),
        }
        Ok(Cgroup { path })
    }

    /// The cgroup directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Applies OCI resources (memory, CPU, pids); unset fields are left.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), String> {
        if let Some(memory) = resources.memory() {
            if let Some(limit) = memory.limit() {
                let value = if limit < 0 { "max".to_string() } else { limit.to_string() };
                write(&self.path.join("memory.max"), &value)?;
                // OCI's swap is memory + swap; cgroup v2 limits swap alone.
                if let Some(swap) = memory.swap() {
                    let swap_only =
                        if swap < 0 || limit < 0 { "max".into() } else { (swap - limit).max(0).to_string() };
                    write_optional(&self.path.join("memory.swap.max"), &swap_only)?;
                }
            }
            if let Some(reservation) = memory.reservation() {
                write_optional(&self.path.join("memory.low"), &reservation.max(0).to_string())?;
            }
        }
        if let Some(cpu) = resources.cpu() {
            if let Some(shares) = cpu.shares() {
                if shares > 0 {
                    // The conversion runc and crun use (2..262144 → 1..10000).
                    let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
                    write_optional(&self.path.join("cpu.weight"), &weight.to_string())?;
                }
            }
            if cpu.quota().is_some() || cpu.period().is_some() {
                let period = cpu.period().unwrap_or(100_000);
                let quota = match cpu.quota() {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".into(),
                };
                write_optional(&self.path.join("cpu.max"), &format!("{quota} {period}"))?;
            }
        }
        if let Some(pids) = resources.pids() {
            let limit = pids.limit();
            let value = if limit <= 0 { "max".to_string() } else { limit.to_string() };
            write_optional(&self.path.join("pids.max"), &value)?;
        }
        Ok(())
    }

    /// Freezes (`true`) or thaws every process of the cgroup and waits
    /// until the kernel reports the new state.
    pub fn freeze(&self, frozen: bool) -> Result<(), String> {
        write(&self.path.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        for _ in 0..500 {
            if std::fs::read_to_string(self.path.join("cgroup.events")).unwrap_or_default().lines().any(|l| l == want) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Err(format!("cgroup {} did not reach '{want}' within 5 s", self.path.display()))
    }

    /// PIDs (guest root namespace) of every process in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// memory.events' oom_kill counter.
    pub fn oom_kills(&self) -> u64 {
        read_flat_keyed(&self.path.join("memory.events")).get("oom_kill").copied().unwrap_or(0)
    }

    /// The files memory.events notifications arrive on (for inotify).
    pub fn memory_events_path(&self) -> PathBuf {
        self.path.join("memory.events")
    }

    /// Statistics for StatsContainer.
    pub fn stats(&self) -> kata_like_protocol::agent::StatsResponse {
        let mut resp = kata_like_protocol::agent::StatsResponse::new();
        resp.cpu = read_flat_keyed(&self.path.join("cpu.stat"));
        let mut memory = read_flat_keyed(&self.path.join("memory.stat"));
        memory.insert("usage".into(), read_value(&self.path.join("memory.current")));
        memory.insert("limit".into(), read_value(&self.path.join("memory.max")));
        memory.insert("swap_usage".into(), read_value(&self.path.join("memory.swap.current")));
        memory.insert("swap_limit".into(), read_value(&self.path.join("memory.swap.max")));
        resp.memory = memory;
        resp.memory_events = read_flat_keyed(&self.path.join("memory.events"));
        resp.pids_current = read_value(&self.path.join("pids.current"));
        resp.pids_limit = read_value(&self.path.join("pids.max"));
        resp
    }

    /// Kills every process in the cgroup with `signal`.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) {
        for pid in self.pids() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
        }
    }

    /// Removes the (empty) cgroup, killing stragglers first.
    pub fn remove(&self) -> Result<(), String> {
        for _ in 0..100 {
            if self.pids().is_empty() {
                break;
            }
            // A frozen cgroup would never let SIGKILL act.
            let _ = write(&self.path.join("cgroup.freeze"), "0");
            self.signal_all(nix::sys::signal::Signal::SIGKILL);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("remove cgroup {}: {e}", self.path.display())),
        }
    }
}
