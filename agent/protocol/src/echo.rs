//! The `Echo` RPC's shared parts: the byte pattern both ends generate and
//! the checksum the agent reports, so a test can tell a request damaged on
//! its way in from a response damaged on its way out.

/// `len` bytes from a splitmix64 stream seeded with `seed`: no period a
/// shifted, repeated or zeroed run of bytes could hide in.
pub fn echo_pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// CRC-32 (IEEE) of `data`, as the agent reports it.
pub fn checksum(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Where two byte strings first differ, and a short description of it, for
/// test failures: None when they are equal.
pub fn first_difference(expected: &[u8], got: &[u8]) -> Option<String> {
    if expected == got {
        return None;
    }
    let at = expected.iter().zip(got).position(|(a, b)| a != b).unwrap_or(expected.len().min(got.len()));
    let run = got[at.min(got.len())..].iter().take_while(|b| **b == 0).count();
    Some(format!(
        "{} bytes expected, {} arrived; first difference at byte {at} (offset {:#x} in its 4 KiB page), \
         followed by {run} NUL bytes",
        expected.len(),
        got.len(),
        at % 4096
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pattern_is_a_prefix_stream_without_short_periods() {
        let long = echo_pattern(7, 10_000);
        assert_eq!(echo_pattern(7, 1234), long[..1234]);
        assert_ne!(echo_pattern(8, 64), long[..64], "the seed matters");
        for period in [1, 2, 4, 8, 4096] {
            assert_ne!(long[..period], long[period..2 * period], "period {period}");
        }
    }

    #[test]
    fn differences_are_located() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        let text = first_difference(b"abcdef", b"ab\0\0ef").expect("differs");
        assert!(text.contains("byte 2") && text.contains("2 NUL"), "{text}");
        let text = first_difference(b"abc", b"ab").expect("differs");
        assert!(text.contains("3 bytes expected, 2 arrived"), "{text}");
    }
}
