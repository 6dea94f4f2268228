//! The guest initramfs: a newc cpio archive with the static agent as `/init`,
//! a static busybox for tools inside the guest, and the few nodes the kernel
//! needs before the agent mounts devtmpfs.
//!
//! Archives are reproducible: entries are sorted, owned by root, with mtime
//! 0, sequential inode numbers and a timestamp-free gzip header, so the same
//! inputs give the same bytes, and [`cache_key`] can name the output.
//! Uncompressed is the default: the guest kernel decompresses in emulated
//! ring 0 on nested hosts, which costs more than reading more bytes.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Format version of the archive layout; bump when the layout changes.
const LAYOUT_VERSION: &str = "kata-like-initrd-3";

/// busybox applets linked into /bin: what the agent's users and our tests
/// run inside the guest (not containers, which bring their own rootfs).
pub const BUSYBOX_APPLETS: &[&str] = &[
    "cat", "chmod", "cp", "date", "dd", "df", "dmesg", "echo", "env", "false", "free", "grep", "head", "hostname",
    "halt", "id", "ip", "kill", "ln", "ls", "mkdir", "mount", "mv", "poweroff", "ps", "pwd", "reboot", "rm", "sh",
    "sleep", "stat", "sync", "tail", "test", "time", "top", "touch", "true", "umount", "uname", "wc",
];

/// Inputs of an image.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// The static agent binary, installed as `/init`.
    pub agent: PathBuf,
    /// A static busybox, installed as `/bin/busybox` with applet links.
    pub busybox: Option<PathBuf>,
    /// Compress with gzip.
    pub gzip: bool,
}

/// Errors building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An input file cannot be read.
    #[error("{what} {path}: {source}")]
    Input {
        /// Which input.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// An input is not a statically linked executable.
    #[error("{what} {path} is not a statically linked ELF executable ({reason}); build it with -C target-feature=+crt-static")]
    NotStatic {
        /// Which input.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file is too large for a newc entry.
    #[error("{0} is larger than 4 GiB, the newc limit")]
    TooLarge(String),
    /// Writing the archive failed.
    #[error("writing the image: {0}")]
    Write(#[from] io::Error),
}

enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDevice(u32, u32),
}

struct Entry {
    path: String,
    mode: u32,
    kind: Kind,
}

fn read_input(what: &'static str, path: &Path) -> Result<Vec<u8>, ImageError> {
    std::fs::read(path).map_err(|source| ImageError::Input { what, path: path.to_path_buf(), source })
}

/// Checks that `bytes` is an ELF executable without a program interpreter
/// (PT_INTERP), i.e. that it will run in a guest with no dynamic loader.
pub fn check_static_elf(what: &'static str, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let fail = |reason| Err(ImageError::NotStatic { what, path: path.to_path_buf(), reason });
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return fail("not ELF");
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return fail("not 64-bit little-endian");
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap_or([0; 8]));
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, usize::from(u16_at(0x36)), usize::from(u16_at(0x38)));
    for i in 0..phnum {
        let at = phoff.saturating_add(i.saturating_mul(phentsize));
        if at.saturating_add(4) > bytes.len() {
            return fail("truncated program headers");
        }
        if u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) == 3 {
            return fail("it has a dynamic loader (PT_INTERP)");
        }
    }
    Ok(())
}

fn entries(spec: &ImageSpec) -> Result<Vec<Entry>, ImageError> {
    let agent = read_input("agent", &spec.agent)?;
    check_static_elf("agent", &spec.agent, &agent)?;
    let dir = |path: &str, mode: u32| Entry { path: path.into(), mode, kind: Kind::Dir };
    let mut list = vec![
        dir("bin", 0o755),
        dir("dev", 0o755),
        dir("etc", 0o755),
        dir("proc", 0o555),
        dir("root", 0o700),
        dir("run", 0o755),
        dir("sbin", 0o755),
        dir("sys", 0o555),
        dir("tmp", 0o1777),
        dir("usr", 0o755),
        dir("usr/bin", 0o755),
        dir("usr/sbin", 0o755),
        // The kernel opens /dev/console for init's stdio before devtmpfs;
        // the agent writes the boot-timer marker through /dev/mem before it
        // mounts anything.
        Entry { path: "dev/console".into(), mode: 0o600, kind: Kind::CharDevice(5, 1) },
        Entry { path: "dev/mem".into(), mode: 0o600, kind: Kind::CharDevice(1, 1) },
        Entry { path: "etc/group".into(), mode: 0o644, kind: Kind::File(b"root:x:0:\n".to_vec()) },
        Entry { path: "etc/passwd".into(), mode: 0o644, kind: Kind::File(b"root:x:0:0:root:/root:/bin/sh\n".to_vec()) },
        Entry { path: "init".into(), mode: 0o755, kind: Kind::File(agent) },
    ];
    if let Some(path) = &spec.busybox {
        let busybox = read_input("busybox", path)?;
        check_static_elf("busybox", path, &busybox)?;
        list.push(Entry { path: "bin/busybox".into(), mode: 0o755, kind: Kind::File(busybox) });
        for applet in BUSYBOX_APPLETS {
            list.push(Entry { path: format!("bin/{applet}"), mode: 0o777, kind: Kind::Symlink("busybox".into()) });
        }
    }
    list.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(list)
}

fn write_cpio<W: Write>(list: &[Entry], mut out: W) -> Result<W, ImageError> {
    for (ino, entry) in list.iter().enumerate() {
        let (type_bits, data): (u32, &[u8]) = match &entry.kind {
            Kind::Dir => (0o040000, &[]),
            Kind::File(bytes) => (0o100000, bytes),
            Kind::Symlink(target) => (0o120000, target.as_bytes()),
            Kind::CharDevice(..) => (0o020000, &[]),
        };
        let size = u32::try_from(data.len()).map_err(|_| ImageError::TooLarge(entry.path.clone()))?;
        let mut builder = cpio::newc::Builder::new(&entry.path)
            .ino(ino as u32 + 1)
            .mode(type_bits | entry.mode)
            .uid(0)
            .gid(0)
            .mtime(0)
            .nlink(if matches!(entry.kind, Kind::Dir) { 2 } else { 1 });
        if let Kind::CharDevice(major, minor) = entry.kind {
            builder = builder.rdev_major(major).rdev_minor(minor);
        }
        let mut writer = builder.write(out, size);
        writer.write_all(data)?;
        out = writer.finish()?;
    }
    Ok(cpio::newc::trailer(out)?)
}

/// Writes the image for `spec` to `out`.
pub fn build<W: Write>(spec: &ImageSpec, out: W) -> Result<W, ImageError> {
    let list = entries(spec)?;
    if spec.gzip {
        let gz = flate2::GzBuilder::new().mtime(0).write(out, flate2::Compression::best());
        Ok(write_cpio(&list, gz)?.finish()?)
    } else {
        write_cpio(&list, out)
    }
}

/// A hash of everything that determines the image bytes.
pub fn cache_key(spec: &ImageSpec) -> Result<String, ImageError> {
    let mut hash = Sha256::new();
    hash.update(LAYOUT_VERSION);
    hash.update(BUSYBOX_APPLETS.join(","));
    hash.update([u8::from(spec.gzip)]);
    hash.update(read_input("agent", &spec.agent)?);
    if let Some(path) = &spec.busybox {
        hash.update(read_input("busybox", path)?);
    }
    Ok(hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// Builds the image into `cache_dir/<key>/initrd.cpio[.gz]` unless it is
/// there already, and returns its path.
pub fn build_cached(spec: &ImageSpec, cache_dir: &Path) -> Result<PathBuf, ImageError> {
    let name = if spec.gzip { "initrd.cpio.gz" } else { "initrd.cpio" };
    let dir = cache_dir.join(cache_key(spec)?);
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
    let file = std::fs::File::create(&tmp)?;
    build(spec, io::BufWriter::new(file))?.flush()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn static_elf(dir: &Path, name: &str) -> PathBuf {
        // A minimal ELF64 header with no program headers: static by our check.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let path = dir.join(name);
        std::fs::write(&path, elf).expect("write");
        path
    }

    fn read_entries(bytes: &[u8]) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        loop {
            let mut reader = cpio::NewcReader::new(rest).expect("entry");
            let e = reader.entry();
            if e.is_trailer() {
                return out;
            }
            let (name, mode, mtime, rdev) = (e.name().to_string(), e.mode(), e.mtime(), e.rdev_major());
            let mut data = Vec::new();
            reader.read_to_end(&mut data).expect("data");
            out.push((name, mode, mtime, rdev, data));
            rest = reader.finish().expect("next");
        }
    }

    #[test]
    fn layout_is_complete_and_reproducible() {
        let dir = tempfile::tempdir().expect("tmp");
        let spec = ImageSpec {
            agent: static_elf(dir.path(), "agent"),
            busybox: Some(static_elf(dir.path(), "bb")),
            gzip: false,
        };
        let a = build(&spec, Vec::new()).expect("build");
        let b = build(&spec, Vec::new()).expect("build");
        assert_eq!(a, b, "same inputs, same bytes");
        let entries = read_entries(&a);
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        let init = entries.iter().find(|e| e.0 == "init").expect("/init");
        assert_eq!(init.1, 0o100755);
        let console = entries.iter().find(|e| e.0 == "dev/console").expect("console");
        assert_eq!((console.1 & 0o170000, console.3), (0o020000, 5));
        let sh = entries.iter().find(|e| e.0 == "bin/sh").expect("sh");
        assert_eq!((sh.1 & 0o170000, sh.4.as_slice()), (0o120000, &b"busybox"[..]));
        assert!(entries.iter().all(|e| e.2 == 0), "mtime 0");
    }

    #[test]
    fn gzip_is_reproducible_and_decodes_to_the_plain_image() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut spec = ImageSpec { agent: static_elf(dir.path(), "agent"), busybox: None, gzip: false };
        let plain = build(&spec, Vec::new()).expect("build");
        spec.gzip = true;
        let gz = build(&spec, Vec::new()).expect("build");
        assert_eq!(gz, build(&spec, Vec::new()).expect("build"));
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut decoded).expect("gunzip");
        assert_eq!(decoded, plain);
    }

    #[test]
    fn dynamic_or_missing_inputs_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let missing = ImageSpec { agent: dir.path().join("nope"), busybox: None, gzip: false };
        assert!(build(&missing, Vec::new()).unwrap_err().to_string().contains("nope"));
        let script = dir.path().join("script");
        std::fs::write(&script, b"#!/bin/sh\n").expect("write");
        let not_elf = ImageSpec { agent: script, busybox: None, gzip: false };
        assert!(matches!(build(&not_elf, Vec::new()), Err(ImageError::NotStatic { .. })));
        // Debian's /bin/bash is dynamically linked.
        let dynamic = ImageSpec { agent: PathBuf::from("/bin/bash"), busybox: None, gzip: false };
        let err = build(&dynamic, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("PT_INTERP"), "{err}");
    }

    #[test]
    fn cache_reuses_and_keys_on_inputs() {
        let dir = tempfile::tempdir().expect("tmp");
        let spec = ImageSpec { agent: static_elf(dir.path(), "agent"), busybox: None, gzip: false };
        let cache = dir.path().join("cache");
        let first = build_cached(&spec, &cache).expect("build");
        let second = build_cached(&spec, &cache).expect("cached");
        assert_eq!(first, second);
        let mut other = spec.clone();
        other.gzip = true;
        assert_ne!(build_cached(&other, &cache).expect("build"), first);
    }
}
