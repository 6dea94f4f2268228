//! virtio-fs (device type 26): the guest's rings here, the file system in a
//! `virtiofsd` process (the real one from crates.io) over vhost-user.
//!
//! virtiofsd does not see guest RAM. It serves shadow rings the VMM drives,
//! in a small memfd of their own ([`shadow`]); the VMM copies each request
//! from the guest's buffers into it and each reply back ([`relay`]). So
//! guest RAM stays private to the VMM, and a VM restored from a template
//! maps the template's memory copy-on-write, shared with every other VM
//! restored from it (docs/design.md, "Template memory").
//!
//! * [`device`]: the [`crate::devices::virtio::VirtioDevice`], the
//!   vhost-user handshake, starting and stopping virtiofsd's rings.
//! * [`relay`]: guest chains → shadow requests, replies → guest chains.
//! * [`shadow`]: the shadow rings and their arena.
//! * [`event_handler`]: guest kicks and virtiofsd's call eventfds.
//! * [`metrics`]: counters logged on exit.

pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod relay;
pub mod shadow;

pub use device::{Fs, FsError};

/// virtio device type of virtio-fs.
pub const TYPE_FS: u32 = 26;
/// Longest tag the configuration space holds (virtio 1.2, 5.11.4).
pub const TAG_LEN: usize = 36;
