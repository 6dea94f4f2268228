//! /proc/self/mountinfo fields, for the code that looks up mounts (the
//! shared directory's clean-up, the host cgroup mount).

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = field.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok());
        match (bytes[i], code) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or below `dir` in /proc/self/mountinfo (in its order,
/// a mount point listed again for each mount stacked on it), each with
/// whether that mount is read-only.
pub fn mounts_at_or_below(dir: &std::path::Path) -> Vec<(std::path::PathBuf, bool)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| {
            let mut fields = line.split(' ').skip(4);
            let point = std::path::PathBuf::from(unescape(fields.next()?));
            let ro = fields.next()?.split(',').any(|o| o == "ro");
            point.starts_with(dir).then_some((point, ro))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape("/plain\\"), "/plain\\");
    }
}
