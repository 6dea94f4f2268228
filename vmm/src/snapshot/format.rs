//! The `state` file: a fixed header, then the [`VmState`] as JSON.
//!
//! | bytes | field |
//! |-------|-------|
//! | 8     | magic `KLVMSNAP` |
//! | 4     | format version (little endian) |
//! | 32    | version of the VMM that wrote it, NUL-padded |
//! | 8     | payload length |
//! | 4     | CRC32 of the payload |
//! | n     | payload: [`VmState`] as JSON |
//!
//! The version is checked before the checksum, so a snapshot from another
//! VMM version is refused as such rather than reported corrupt. Bump
//! [`FORMAT_VERSION`] whenever [`VmState`] or the memory layout changes
//! meaning: a VMM refuses every version but its own.

use std::io::Write;
use std::path::Path;

use super::{SnapshotError, VmState};

pub use kata_like_vmm_contract::snapshot::FORMAT_VERSION;
pub use kata_like_vmm_contract::snapshot::MAGIC;
const WRITER_LEN: usize = 32;
const HEADER_LEN: usize = 8 + 4 + WRITER_LEN + 8 + 4;
/// A state is a few hundred KiB at most; anything larger is not ours.
const MAX_PAYLOAD: u64 = 64 << 20;

/// Encodes `state` with the header for `version` (tests write other
/// versions; [`write`] uses [`FORMAT_VERSION`]).
pub fn encode(state: &VmState, version: u32) -> Result<Vec<u8>, serde_json::Error> {
    let payload = serde_json::to_vec(state)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    let mut writer = [0u8; WRITER_LEN];
    let ours = env!("CARGO_PKG_VERSION").as_bytes();
    let n = ours.len().min(WRITER_LEN);
    writer[..n].copy_from_slice(&ours[..n]);
    out.extend_from_slice(&writer);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Writes `state` to `path` (through a temporary file and a rename, so a
/// crash never leaves a half-written state under the final name).
pub fn write(path: &Path, state: &VmState) -> Result<(), SnapshotError> {
    let bytes = encode(state, FORMAT_VERSION)
        .map_err(|e| SnapshotError::Invalid { path: path.to_path_buf(), why: format!("cannot encode: {e}") })?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(SnapshotError::io(&tmp))?;
    file.write_all(&bytes).map_err(SnapshotError::io(&tmp))?;
    file.sync_all().map_err(SnapshotError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(SnapshotError::io(path))
}

/// Reads and checks a state file.
pub fn read(path: &Path) -> Result<VmState, SnapshotError> {
    let bytes = std::fs::read(path).map_err(SnapshotError::io(path))?;
    decode(path, &bytes)
}

/// Checks and decodes the bytes of a state file (`path` names it in errors).
pub fn decode(path: &Path, bytes: &[u8]) -> Result<VmState, SnapshotError> {
    let truncated = |what: &str| SnapshotError::Truncated { path: path.to_path_buf(), what: what.to_string() };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot { path: path.to_path_buf() });
    }
    if bytes.len() < HEADER_LEN {
        return Err(truncated(&format!("{} of {HEADER_LEN} header bytes", bytes.len())));
    }
    let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = u32_at(8);
    let writer_bytes = &bytes[12..12 + WRITER_LEN];
    let writer = String::from_utf8_lossy(writer_bytes).trim_end_matches('\0').to_string();
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path: path.to_path_buf(),
            found: version,
            expected: FORMAT_VERSION,
            writer,
        });
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[12 + WRITER_LEN..20 + WRITER_LEN]);
    let len = u64::from_le_bytes(len_bytes);
    if len > MAX_PAYLOAD {
        return Err(SnapshotError::Invalid {
            path: path.to_path_buf(),
            why: format!("payload length {len} is implausible"),
        });
    }
    let stored = u32_at(20 + WRITER_LEN);
    let payload = &bytes[HEADER_LEN..];
    if (payload.len() as u64) < len {
        return Err(truncated(&format!("{} of {len} payload bytes", payload.len())));
    }
    if payload.len() as u64 > len {
        return Err(SnapshotError::Invalid {
            path: path.to_path_buf(),
            why: format!("{} bytes after the payload", payload.len() as u64 - len),
        });
    }
    let computed = crc32fast::hash(payload);
    if computed != stored {
        return Err(SnapshotError::Checksum { path: path.to_path_buf(), stored, computed });
    }
    serde_json::from_slice(payload)
        .map_err(|e| SnapshotError::Invalid { path: path.to_path_buf(), why: format!("undecodable state: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VmConfig;

    fn sample() -> VmState {
        VmState {
            config: VmConfig::new("/boot/vmlinux"),
            memory_size: 128 << 20,
            memory_crc32: 0,
            kvm: Default::default(),
            vcpus: vec![Default::default()],
            serial: Default::default(),
            transports: vec![],
        }
    }

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("state");
        write(&path, &sample()).expect("write");
        let back = read(&path).expect("read");
        assert_eq!(back.memory_size, 128 << 20);
        assert_eq!(back.config, sample().config);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn every_kind_of_damage_is_named() {
        let p = Path::new("/snap/state");
        let good = encode(&sample(), FORMAT_VERSION).expect("encode");
        let msg = |bytes: &[u8]| decode(p, bytes).expect_err("refused").to_string();

        assert!(msg(b"ELF\x7f....").contains("not a kata-like VM snapshot"));
        assert!(msg(&good[..20]).contains("truncated (20 of"));
        assert!(msg(&good[..good.len() - 10]).contains("truncated"));
        let mut flipped = good.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        assert!(msg(&flipped).contains("checksum mismatch"), "{}", msg(&flipped));
        let mut longer = good.clone();
        longer.push(b'x');
        assert!(msg(&longer).contains("1 bytes after the payload"));

        let newer = encode(&sample(), FORMAT_VERSION + 1).expect("encode");
        let text = msg(&newer);
        assert!(text.contains(&format!("format version {}", FORMAT_VERSION + 1)), "{text}");
        assert!(text.contains(&format!("reads version {FORMAT_VERSION} only")), "{text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    }
}
