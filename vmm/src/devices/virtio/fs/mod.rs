//! virtio-fs (device type 26) as a vhost-user frontend.
//!
//! The file system itself is served by a `virtiofsd` process (the real one
//! from crates.io); this device only owns what the guest sees on the MMIO
//! transport (features, the `tag`/`num_request_queues` configuration space)
//! and hands the queues to virtiofsd over the vhost-user socket:
//!
//! * guest RAM is shared with virtiofsd by file descriptor (the VMM backs RAM
//!   with a memfd when a virtio-fs device is configured, see
//!   [`crate::memory::create_shared`]);
//! * the queue kicks go from KVM's ioeventfds straight to virtiofsd;
//! * virtiofsd signals used buffers on per-queue "call" eventfds, which the
//!   VMM's event loop turns into the virtio-mmio interrupt (the interrupt
//!   status register lives in the VMM, so a raw irqfd would not do).
//!
//! * [`device`]: the [`crate::devices::virtio::VirtioDevice`] and the
//!   vhost-user handshake.
//! * [`event_handler`]: call eventfds → guest interrupt.
//! * [`metrics`]: counters logged on exit.

pub mod device;
pub mod event_handler;
pub mod metrics;

pub use device::{Fs, FsError};

/// virtio device type of virtio-fs.
pub const TYPE_FS: u32 = 26;
/// Longest tag the configuration space holds (virtio 1.2, 5.11.4).
pub const TAG_LEN: usize = 36;
