//! Helpers shared by the benchmark binaries (tests/src/bin/bench_*.rs).

/// The median (upper middle for an even count); NaN for no samples.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The median of the finite samples; `None` if there is none (a table
/// prints "n/a" for it).
pub fn finite_median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    (!v.is_empty()).then(|| median(v))
}

/// The `p`th percentile (0..=100, nearest rank); NaN for no samples.
pub fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Proportional set size of one process, KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pss {
    /// All of it.
    pub all: u64,
    /// Guest RAM: the VMM's anonymous guest RAM mapping
    /// (`[anon:kata-like-guest-ram]`), a template memory file it maps
    /// (`…/memory`) or, before 2026-12, its guest RAM memfd.
    pub guest: u64,
    /// Of `guest`, the pages this VM has to itself (anonymous: written or
    /// touched by this guest, not shared with other VMs).
    pub guest_private: u64,
    /// Unique set size: pages no other process maps (what one more such
    /// process adds to a node).
    pub uss: u64,
}

impl std::ops::Add for Pss {
    type Output = Pss;
    fn add(self, o: Pss) -> Pss {
        Pss {
            all: self.all + o.all,
            guest: self.guest + o.guest,
            guest_private: self.guest_private + o.guest_private,
            uss: self.uss + o.uss,
        }
    }
}

/// Whether an smaps mapping line names guest RAM.
fn is_guest_ram(line: &str) -> bool {
    let path = line.split_whitespace().nth(5).unwrap_or("");
    line.contains("kata-like-guest-ram") || (path.starts_with('/') && path.ends_with("/memory"))
}

/// The PSS of `pid` from /proc/PID/smaps (zero if it is gone).
pub fn pss_of(pid: u32) -> Pss {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut in_guest) = (Pss::default(), false);
    let kib = |v: &str| v.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_guest = is_guest_ram(line);
        } else if let Some(v) = line.strip_prefix("Pss:") {
            total.all += kib(v);
            if in_guest {
                total.guest += kib(v);
            }
        } else if let Some(v) = line.strip_prefix("Private_Clean:").or_else(|| line.strip_prefix("Private_Dirty:")) {
            total.uss += kib(v);
        } else if let Some(v) = line.strip_prefix("Anonymous:") {
            if in_guest {
                total.guest_private += kib(v);
            }
        }
    }
    total
}

/// Proportional set size of `pid` in KiB: (all, guest RAM).
pub fn pss(pid: u32) -> (u64, u64) {
    let p = pss_of(pid);
    (p.all, p.guest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_mappings_are_recognised() {
        assert!(is_guest_ram("7f00-7f10 rw-p 00000000 00:00 0    [anon:kata-like-guest-ram]"));
        assert!(is_guest_ram("7f00-7f10 rw-p 00000000 fe:00 12   /var/lib/t/abc/memory"));
        assert!(is_guest_ram("7f00-7f10 rw-s 00000000 00:01 9    /memfd:kata-like-guest-ram (deleted)"));
        assert!(!is_guest_ram("7f00-7f10 rw-s 00000000 00:01 9    /memfd:kata-like-fs-rings (deleted)"));
        assert!(!is_guest_ram("7f00-7f10 r-xp 00000000 fe:00 12   /usr/lib/libc.so.6"));
        let me = pss_of(std::process::id());
        assert!(me.all > 0 && me.guest == 0, "{me:?}");
    }

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert!(median(vec![]).is_nan());
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(v.clone(), 50.0), 5.0);
        assert_eq!(percentile(v.clone(), 99.0), 10.0);
        assert_eq!(percentile(v, 0.0), 1.0);
    }

    #[test]
    fn our_own_pss_is_positive() {
        assert!(pss(std::process::id()).0 > 0);
    }
}
