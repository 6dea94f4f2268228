//! virtio-net (device type 1), implemented in userspace on a tap device
//! (hosts like ours have no vhost-net module).
//!
//! The pod's network reaches the guest this way: the shim creates a tap in
//! the pod's network namespace, redirects traffic between the CNI veth and
//! the tap, and hands the tap's descriptor to the VMM; this device moves
//! Ethernet frames between the tap and the guest's virtqueues.
//!
//! Features offered: `VERSION_1`, `EVENT_IDX`, `MAC`, `MTU`. No checksum or
//! segmentation offloads and no mergeable RX buffers: every frame is whole
//! and checksummed on both sides, so nothing the guest writes in a header
//! reaches the host kernel's GSO code. Offloads are a throughput
//! optimisation for later, measured first.
//!
//! * [`device`]: the virtio device and RX/TX queue processing.
//! * [`tap`]: the tap backend (a few ioctls on /dev/net/tun).
//! * [`event_handler`]: queue kicks and tap readiness on the VMM thread.
//! * [`metrics`]: counters logged on exit.

pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod tap;

pub use device::{Backend, Net, NetError};
pub use metrics::NetMetrics;
pub use tap::{Tap, TapError};

/// virtio device type of a network card.
pub const TYPE_NET: u32 = 1;
/// Size of `virtio_net_hdr_v1` (with `num_buffers`), in front of every frame
/// on both queues and on the tap (`TUNSETVNETHDRSZ`).
pub use kata_like_vmm_contract::tap::VNET_HDR_LEN;
/// Largest frame plus header moved in one piece (64 KiB IP packet, Ethernet
/// and VLAN headers, virtio-net header), as Firecracker.
pub const MAX_BUFFER: usize = 65_562;
/// Default MTU when none is configured.
pub const DEFAULT_MTU: u16 = 1500;
/// Smallest MTU accepted (IPv4's minimum datagram).
pub const MIN_MTU: u16 = 68;

/// virtio-net feature bits (virtio 1.2, 5.1.3).
pub mod feature {
    /// The device reports its maximum MTU.
    pub const MTU: u64 = 1 << 3;
    /// The device has a MAC address.
    pub const MAC: u64 = 1 << 5;
}

pub use kata_like_vmm_contract::tap::{format_mac, parse_mac};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_strictly() {
        assert_eq!(parse_mac("02:00:0a:58:00:2f"), Some([2, 0, 0x0a, 0x58, 0, 0x2f]));
        for bad in
            ["", "02:00:0a:58:00", "02:00:0a:58:00:2f:01", "2:00:0a:58:00:2f", "zz:00:0a:58:00:2f", "02-00-0a-58-00-2f"]
        {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(format_mac(&[0x02, 0x42, 0xac, 0x11, 0, 0x0f]), "02:42:ac:11:00:0f");
    }
}
