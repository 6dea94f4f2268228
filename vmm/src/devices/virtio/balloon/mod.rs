//! virtio-balloon (device type 5), used for free page reporting: the guest
//! reports blocks of memory it has freed and the VMM gives their host pages
//! back (MADV_DONTNEED), so memory a container used and released does not
//! stay with the VM for the rest of its life.
//!
//! Features offered: `VERSION_1`, `EVENT_IDX`, `REPORTING`,
//! `DEFLATE_ON_OOM`. The balloon's target (`num_pages`) stays 0: the VMM
//! never asks for memory the guest was promised, so the guest cannot be
//! starved by it; inflated pages (a guest may inflate on its own) are given
//! back the same way and come back zeroed when the guest deflates.
//!
//! A reported page of a VM restored from a template goes back to the
//! template's bytes (its private copy is dropped; the mapping is the
//! template file's, MAP_PRIVATE): the guest does not read a page it reported
//! before writing it (no page poisoning is configured in our guest kernel,
//! and `PAGE_POISON` is not offered, so a guest that poisons does not
//! report).
//!
//! * [`device`]: the virtio device and its three queues.
//! * [`event_handler`]: queue kicks on the VMM thread.
//! * [`metrics`]: counters logged on exit.

pub mod device;
pub mod event_handler;
pub mod metrics;

pub use device::Balloon;

/// The guest's free page reporting order (blocks of 2^7 pages, 512 KiB),
/// set on its command line.
pub const REPORTING_ORDER: u32 = 7;

/// virtio device type of a memory balloon.
pub const TYPE_BALLOON: u32 = 5;
