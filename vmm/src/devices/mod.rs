//! Emulated devices and the buses the vCPUs dispatch port and MMIO exits to.

pub mod boot_timer;
pub mod bus;
pub mod i8042;
pub mod serial;
pub mod trigger;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use trigger::EventFdTrigger;
