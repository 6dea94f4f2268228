//! Tails of a VM's logs (VMM log, virtiofsd log, guest console) for error
//! reports, and values read from the VMM log.

use std::path::Path;

/// The last `lines` lines of a text file (for error reports).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of a guest console, preceded by the line that
/// says why the guest kernel died if it did (a panic's reason is printed
/// before its register dump and backtrace, so it is rarely in the tail).
pub fn console_excerpt(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let cause = all[..from].iter().rev().find(|l| l.contains("Kernel panic - not syncing"));
    match cause {
        Some(cause) => format!("{cause}\n[...]\n{}", all[from..].join("\n")),
        None => all[from..].join("\n"),
    }
}

/// The value of `key=<u64>` on the first line of a VMM log containing
/// `marker` (e.g. `us_since_start` of "boot-timer").
pub fn log_value(log: &str, marker: &str, key: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_excerpt_names_the_panic_above_its_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let console = dir.path().join("console.log");
        let mut text = String::from("boot\n[ 3.1] Kernel panic - not syncing: sysrq triggered crash\n");
        for i in 0..20 {
            text.push_str(&format!("[ 3.2] trace line {i}\n"));
        }
        std::fs::write(&console, &text).expect("write");
        let excerpt = console_excerpt(&console, 3);
        assert_eq!(
            excerpt,
            "[ 3.1] Kernel panic - not syncing: sysrq triggered crash\n[...]\n\
             [ 3.2] trace line 17\n[ 3.2] trace line 18\n[ 3.2] trace line 19"
        );
        std::fs::write(&console, "a\nb\nc\n").expect("write");
        assert_eq!(console_excerpt(&console, 2), "b\nc");
    }

    #[test]
    fn log_values_are_read_from_the_first_matching_line() {
        let log = "INFO first KVM_RUN us_since_start=12179 monotonic_ns=1\n\
                   INFO boot-timer: guest init reached user space us_since_start=4242 monotonic_ns=5\n\
                   INFO boot-timer: guest init reached user space us_since_start=9999 monotonic_ns=6";
        assert_eq!(log_value(log, "first KVM_RUN", "us_since_start"), Some(12179));
        assert_eq!(log_value(log, "boot-timer", "us_since_start"), Some(4242));
        assert_eq!(log_value("a us_since_start=7", "missing", "us_since_start"), None);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\n").expect("write");
        assert_eq!(tail(&path, 2), "b\nc");
        assert_eq!(tail(&dir.path().join("missing"), 2), "");
    }
}
