//! Admission control for VM boots: at most `max_concurrent_boots` sandbox
//! VMs under one state root boot at once; the others wait for a slot.
//!
//! Why: booting is the expensive, CPU-bound part of a sandbox's life, and on
//! hosts where guest kernel code is slow (nested virtualisation, here PVM
//! with emulated ring 0) a guest's progress collapses once it gets less than
//! about 40% of a core (measured: docs/benchmarks.md). Ten boots on two
//! cores then take far longer than ten boots two at a time, and all of them
//! hit the boot timeout. Queuing keeps the total time linear in the number
//! of pods; once booted, an idle guest costs next to nothing.
//!
//! A slot is an exclusive `flock(2)` on `<state_root>/boot-slots/<k>`,
//! shared by every shim and `kata-like run` using that state root. The
//! kernel drops the lock when its holder exits, so a killed shim never keeps
//! a slot. Waiters poll (flock has no timed wait); the order is not strictly
//! first come, first served.
//!
//! Written here rather than with a crate: nix's `Flock` does the locking;
//! what is left is the slot loop and its deadline.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// The slot directory's name under the state root.
pub const DIR: &str = "boot-slots";

/// How often a waiter retries the slots.
const POLL: Duration = Duration::from_millis(200);

/// A held boot slot; released when dropped.
#[derive(Debug)]
pub struct BootSlot {
    _lock: Option<Flock<File>>,
    /// How long the caller waited for it.
    pub waited: Duration,
}

/// Why no slot was obtained.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The slot directory or a slot file cannot be used.
    #[error("boot slot {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// All slots stayed taken until the deadline.
    #[error(
        "waited {waited:?} for one of {slots} boot slots in {dir} (max_concurrent_boots); \
         other sandboxes kept booting the whole time, raise boot_queue_timeout_secs or start fewer pods at once"
    )]
    Timeout {
        /// The slot directory.
        dir: PathBuf,
        /// How many slots there are.
        slots: u32,
        /// How long the caller waited.
        waited: Duration,
    },
}

/// Takes one of `slots` slots in `dir`, waiting up to `timeout`;
/// `slots == 0` means no limit (returns at once, holding nothing).
pub fn acquire(dir: &Path, slots: u32, timeout: Duration) -> Result<BootSlot, SlotError> {
    let begin = Instant::now();
    if slots == 0 {
        return Ok(BootSlot { _lock: None, waited: Duration::ZERO });
    }
    std::fs::create_dir_all(dir).map_err(|source| SlotError::Io { path: dir.into(), source })?;
    let mut logged = false;
    loop {
        for k in 0..slots {
            let path = dir.join(k.to_string());
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|source| SlotError::Io { path: path.clone(), source })?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    let waited = begin.elapsed();
                    if logged {
                        log::info!("got boot slot {k} after {waited:?}");
                    }
                    return Ok(BootSlot { _lock: Some(lock), waited });
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {}
                Err((_, errno)) => return Err(SlotError::Io { path, source: errno.into() }),
            }
        }
        let waited = begin.elapsed();
        if waited >= timeout {
            return Err(SlotError::Timeout { dir: dir.into(), slots, waited });
        }
        if !logged {
            log::info!("all {slots} boot slots in {} are taken; waiting (max_concurrent_boots)", dir.display());
            logged = true;
        }
        std::thread::sleep(POLL.min(timeout - waited));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exclusive_and_freed_on_drop() {
        let dir = tempfile::tempdir().expect("tmp");
        let a = acquire(dir.path(), 2, Duration::ZERO).expect("first slot");
        let b = acquire(dir.path(), 2, Duration::ZERO).expect("second slot");
        let err = acquire(dir.path(), 2, Duration::from_millis(300)).unwrap_err().to_string();
        assert!(err.contains("2 boot slots") && err.contains("boot_queue_timeout_secs"), "{err}");
        drop(a);
        let c = acquire(dir.path(), 2, Duration::ZERO).expect("a freed slot");
        drop((b, c));
    }

    #[test]
    fn a_waiter_gets_the_slot_when_it_is_released() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().expect("tmp");
        let held = acquire(dir.path(), 1, Duration::ZERO).expect("slot");
        let released = std::sync::Arc::new(AtomicBool::new(false));
        let (path, flag) = (dir.path().to_path_buf(), released.clone());
        let waiter = std::thread::spawn(move || {
            let slot = acquire(&path, 1, Duration::from_secs(30));
            (slot.is_ok(), flag.load(Ordering::SeqCst))
        });
        std::thread::sleep(Duration::from_millis(500));
        released.store(true, Ordering::SeqCst);
        drop(held);
        assert_eq!(waiter.join().expect("thread"), (true, true), "the waiter got the slot only after its release");
    }

    #[test]
    fn zero_slots_means_no_limit() {
        let dir = tempfile::tempdir().expect("tmp");
        let slots: Vec<_> =
            (0..5).map(|_| acquire(&dir.path().join("x"), 0, Duration::ZERO).expect("unlimited")).collect();
        assert_eq!(slots.len(), 5);
        assert!(!dir.path().join("x").exists(), "nothing created without a limit");
    }

    #[test]
    fn an_unusable_directory_is_named() {
        let file = tempfile::NamedTempFile::new().expect("tmp");
        let err = acquire(&file.path().join("slots"), 1, Duration::ZERO).unwrap_err().to_string();
        assert!(err.contains(&file.path().display().to_string()), "{err}");
    }
}
