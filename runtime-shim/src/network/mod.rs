//! Pod networking, Kata's "tcfilter" model.
//!
//! CNI (run by containerd's CRI plugin) gives the pod a network namespace
//! with a veth (`eth0`) holding the pod's address and routes. The VM cannot
//! use a veth, so in that namespace we create a tap and join the two with
//! tc: an ingress qdisc on each and a match-all u32 filter whose action is
//! `mirred egress redirect` to the other. Every frame arriving on the veth
//! leaves through the tap into the VMM's virtio-net device, and every
//! frame the guest sends leaves through the veth, before the namespace's
//! own IP stack sees either. The guest gets the veth's MAC, addresses,
//! routes and MTU, so to the rest of the cluster the VM *is* the pod.
//!
//! Why tc redirect rather than macvtap or a bridge (Kata's other models):
//! it works with any CNI interface type (veth, macvlan, ipvlan), needs no
//! extra kernel module (macvtap), and keeps the namespace's addresses on
//! the veth for tools that inspect it, as Kata does by default.
//!
//! The tap is opened without `TUNSETPERSIST`: it disappears when its last
//! descriptor (the VMM's) closes, and the qdiscs go with the namespace when
//! CNI deletes it, so a crashed sandbox leaves no network state behind.
//!
//! * [`attach`]: the namespace work (netns thread, netlink).
//! * [`forward`]: `kubectl port-forward` into the guest.

pub mod attach;
pub mod forward;

use std::net::IpAddr;
use std::os::fd::OwnedFd;

pub use attach::{attach, detached_tap, has_interface};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_request_carries_the_interface_and_orders_routes() {
        let net = |s: &str, p| IpNet { addr: s.parse().expect("ip"), prefix: p };
        let pod = PodNetwork {
            tap: std::fs::File::open("/dev/null").expect("fd").into(),
            interface: Interface {
                name: "eth0".into(),
                mac: "02:42:0a:d7:00:02".into(),
                mtu: 1450,
                addresses: vec![net("10.215.0.2", 24)],
            },
            routes: vec![
                Route { dest: None, gateway: "10.215.0.1".parse().ok(), source: None },
                Route { dest: Some(net("10.215.0.0", 24)), gateway: None, source: "10.215.0.2".parse().ok() },
            ],
            forward: None,
        };
        let req = pod.guest_request();
        let iface = &req.interfaces[0];
        assert_eq!((iface.mac.as_str(), iface.name.as_str(), iface.mtu), ("02:42:0a:d7:00:02", "eth0", 1450));
        assert_eq!((iface.addresses[0].address.as_str(), iface.addresses[0].prefix), ("10.215.0.2", 24));
        assert_eq!(req.routes[0].dest.address, "10.215.0.0", "the connected route comes first");
        assert_eq!(req.routes[0].source, "10.215.0.2");
        assert!(req.routes[1].dest.is_none());
        assert_eq!((req.routes[1].gateway.as_str(), req.routes[1].device.as_str()), ("10.215.0.1", "eth0"));
    }
}

/// Name of the tap we create in the pod's namespace.
pub const TAP_NAME: &str = "tap0_kl";

/// An address with its prefix length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The pod interface the guest takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name in the pod namespace (the guest uses the same).
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// MTU.
    pub mtu: u32,
    /// Addresses.
    pub addresses: Vec<IpNet>,
}

/// A route of the pod namespace through the pod interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination; None for the default route.
    pub dest: Option<IpNet>,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Preferred source address, if any.
    pub source: Option<IpAddr>,
}

/// What [`attach`] set up: the tap for the VMM, and what the guest must
/// configure.
#[derive(Debug)]
pub struct PodNetwork {
    /// The tap's descriptor (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), for
    /// the VMM's `--net fd=N`.
    pub tap: OwnedFd,
    /// The interface the tap stands in for.
    pub interface: Interface,
    /// Its routes, most specific first as the kernel listed them.
    pub routes: Vec<Route>,
    /// The namespace's port-forward listener ([`forward`]), if it could be
    /// set up.
    pub forward: Option<std::net::TcpListener>,
}

impl PodNetwork {
    /// The agent request that gives the guest this network: the interface
    /// (found by MAC) with its name, MTU and addresses, then its routes,
    /// directly connected ones first so every gateway is reachable.
    pub fn guest_request(&self) -> kata_like_protocol::agent::ConfigureNetworkRequest {
        use kata_like_protocol::agent::{ConfigureNetworkRequest, IpNet as PbNet, NetInterface, NetRoute};
        let pb = |net: &IpNet| {
            let mut n = PbNet::new();
            n.address = net.addr.to_string();
            n.prefix = u32::from(net.prefix);
            n
        };
        let mut iface = NetInterface::new();
        iface.mac = self.interface.mac.clone();
        iface.name = self.interface.name.clone();
        iface.mtu = self.interface.mtu;
        iface.addresses = self.interface.addresses.iter().map(pb).collect();
        let mut routes: Vec<&Route> = self.routes.iter().collect();
        routes.sort_by_key(|r| r.gateway.is_some());
        let mut req = ConfigureNetworkRequest::new();
        req.interfaces = vec![iface];
        req.routes = routes
            .into_iter()
            .map(|r| {
                let mut route = NetRoute::new();
                route.dest = r.dest.as_ref().map(pb).into();
                route.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
                route.source = r.source.map(|s| s.to_string()).unwrap_or_default();
                route.device = self.interface.name.clone();
                route
            })
            .collect();
        req
    }
}

/// Errors setting up pod networking; each names the step.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace file cannot be opened or entered.
    #[error("network namespace {path}: {source}")]
    Netns {
        /// Its path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The namespace has no interface to take over.
    #[error("network namespace {0} has no interface besides lo (did CNI run?)")]
    NoInterface(String),
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// The step.
        what: String,
        /// The error.
        source: rtnetlink::Error,
    },
    /// The tap cannot be created.
    #[error("creating tap {TAP_NAME}: {0}")]
    Tap(#[from] kata_like_vmm_contract::tap::TapError),
    /// Anything else, named.
    #[error("{0}")]
    Other(String),
}
