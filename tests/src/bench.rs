//! Helpers shared by the benchmark binaries (tests/src/bin/bench_*.rs).

/// The median (upper middle for an even count); NaN for no samples.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
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

/// Proportional set size of `pid` in KiB: (all, guest RAM memfd).
pub fn pss(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut all, mut guest, mut in_guest) = (0, 0, false);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            in_guest = line.contains("memfd:kata-like-guest-ram");
        } else if let Some(v) = line.strip_prefix("Pss:") {
            let kib = v.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            all += kib;
            if in_guest {
                guest += kib;
            }
        }
    }
    (all, guest)
}

#[cfg(test)]
mod tests {
    use super::*;

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
