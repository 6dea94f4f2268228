//! Setting up the tcfilter plumbing inside a pod's network namespace.
//!
//! The work runs on a thread of its own that enters the namespace with
//! setns(2): the tap (TUNSETIFF) and the netlink socket are created in the
//! namespace of the thread that creates them, and no other thread of the
//! shim ever changes namespace.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures_util::TryStreamExt;
use kata_like_vmm_contract::tap::{format_mac, Tap};
use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{Interface, IpNet, NetworkError, PodNetwork, Route, TAP_NAME};

/// ETH_P_ALL: the filters match every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The ingress qdisc's handle (`ffff:`), the filters' parent.
const INGRESS_PARENT: u32 = 0xffff_0000;

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// Enters the network namespace at `netns` (e.g. `/var/run/netns/cni-…`),
/// creates the tap, redirects traffic between it and the pod interface,
/// and returns the tap with the interface's configuration.
pub fn attach(netns: &Path) -> Result<PodNetwork, NetworkError> {
    let shown = netns.display().to_string();
    let ns_err = |source| NetworkError::Netns { path: shown.clone(), source };
    let file = File::open(netns).map_err(ns_err)?;
    let name = shown.clone();
    std::thread::Builder::new()
        .name("netns-attach".into())
        .spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetworkError::Netns { path: name.clone(), source: e.into() })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| NetworkError::Other(format!("netlink runtime: {e}")))?;
            runtime.block_on(attach_here(&name))
        })
        .map_err(ns_err)?
        .join()
        .map_err(|_| NetworkError::Other(format!("the thread attaching {shown} panicked")))?
}

/// Whether the network namespace at `netns` has an interface for the guest
/// (one that is neither loopback nor our tap): Docker's `--network none`
/// and podman's `--network none` give a namespace with loopback only, and
/// such a container's VM gets no NIC.
pub fn has_interface(netns: &Path) -> Result<bool, NetworkError> {
    let shown = netns.display().to_string();
    let ns_err = |source| NetworkError::Netns { path: shown.clone(), source };
    let file = File::open(netns).map_err(ns_err)?;
    let name = shown.clone();
    std::thread::Builder::new()
        .name("netns-look".into())
        .spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetworkError::Netns { path: name.clone(), source: e.into() })?;
            // /proc/thread-self/net follows this thread's namespace.
            let dev = std::fs::read_to_string("/proc/thread-self/net/dev")
                .map_err(|e| NetworkError::Netns { path: name.clone(), source: e })?;
            Ok(dev.lines().skip(2).filter_map(|l| l.split(':').next()).any(|n| {
                let n = n.trim();
                n != "lo" && n != TAP_NAME
            }))
        })
        .map_err(ns_err)?
        .join()
        .map_err(|_| NetworkError::Other(format!("the thread looking into {shown} panicked")))?
}

/// A tap in a network namespace of its own, for a VM template's NIC slot:
/// the template guest sees a NIC that leads nowhere, and no host namespace
/// ever shows the tap. The namespace lives as long as the descriptor.
pub fn detached_tap() -> Result<std::os::fd::OwnedFd, NetworkError> {
    std::thread::Builder::new()
        .name("template-tap".into())
        .spawn(|| {
            // Only this thread changes namespace, and it ends here.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetworkError::Other(format!("a network namespace for the template NIC: {e}")))?;
            Ok(Tap::open(TAP_NAME)?.into_fd())
        })
        .map_err(|e| NetworkError::Other(format!("template NIC thread: {e}")))?
        .join()
        .map_err(|_| NetworkError::Other("the thread making the template NIC panicked".into()))?
}

fn link_name(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
        .unwrap_or_default()
}

/// The interface the guest takes over: the first one that is neither
/// loopback nor our tap.
fn pod_link(links: &[LinkMessage]) -> Option<&LinkMessage> {
    links.iter().find(|l| !l.header.flags.contains(LinkFlags::Loopback) && link_name(l) != TAP_NAME)
}

async fn attach_here(netns: &str) -> Result<PodNetwork, NetworkError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| NetworkError::Other(format!("netlink socket: {e}")))?;
    tokio::spawn(connection);

    let links: Vec<LinkMessage> =
        handle.link().get().execute().try_collect().await.map_err(netlink("listing links"))?;
    let pod = pod_link(&links).ok_or_else(|| NetworkError::NoInterface(netns.to_string()))?.clone();
    let others: Vec<String> = links.iter().filter(|l| l.header.index != pod.header.index).map(link_name).collect();
    let name = link_name(&pod);
    let index = pod.header.index;
    let mac = pod
        .attributes
        .iter()
        .find_map(|a| if let LinkAttribute::Address(m) = a { Some(format_mac(m)) } else { None })
        .ok_or_else(|| NetworkError::Other(format!("{name} has no MAC address")))?;
    let mtu =
        pod.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None }).unwrap_or(1500);
    if others.iter().any(|n| n != "lo" && n != TAP_NAME) {
        log::warn!("pod network {netns}: only {name} is given to the guest; ignoring {others:?}");
    }

    let addresses = addresses_of(&handle, index).await?;
    let routes = routes_via(&handle, index).await?;

    let tap = Tap::open(TAP_NAME)?;
    let tap_index = link_index(&handle, TAP_NAME).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(tap_index).mtu(mtu).up().build())
        .execute()
        .await
        .map_err(netlink(format!("setting {TAP_NAME} up with MTU {mtu}")))?;
    for (from, from_name, to) in [(index, name.as_str(), tap_index), (tap_index, TAP_NAME, index)] {
        handle
            .qdisc()
            .add(from as i32)
            .ingress()
            .execute()
            .await
            .map_err(netlink(format!("adding an ingress qdisc to {from_name}")))?;
        handle
            .traffic_filter(from as i32)
            .add()
            .parent(INGRESS_PARENT)
            .protocol(ETH_P_ALL.to_be())
            .redirect(to)
            .map_err(netlink("building the redirect filter"))?
            .execute()
            .await
            .map_err(netlink(format!("redirecting {from_name} ingress")))?;
    }
    log::info!("pod network {netns}: {name} ({mac}, MTU {mtu}) ⇄ {TAP_NAME}");
    let forward = super::forward::listen_here()
        .inspect_err(|e| log::warn!("pod network {netns}: port-forward is unavailable: {e}"))
        .ok();
    Ok(PodNetwork { tap: tap.into_fd(), interface: Interface { name, mac, mtu, addresses }, routes, forward })
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await.map_err(netlink(format!("looking up {name}")))? {
        Some(link) => Ok(link.header.index),
        None => Err(NetworkError::Other(format!("{name} vanished after it was created"))),
    }
}

/// Global-scope addresses of link `index`.
async fn addresses_of(handle: &Handle, index: u32) -> Result<Vec<IpNet>, NetworkError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("listing addresses"))?;
    Ok(messages
        .iter()
        .filter(|m| m.header.scope == AddressScope::Universe)
        .filter_map(|m| {
            let addr = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                m.attributes.iter().find_map(|a| if let AddressAttribute::Address(ip) = a { Some(*ip) } else { None })
            })?;
            Some(IpNet { addr, prefix: m.header.prefix_len })
        })
        .collect())
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Routes of the main table that leave through link `index`, IPv4 then
/// IPv6, without the kernel's own (link-local, multicast) ones.
async fn routes_via(handle: &Handle, index: u32) -> Result<Vec<Route>, NetworkError> {
    let mut routes = Vec::new();
    for query in [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()] {
        let messages: Vec<RouteMessage> =
            handle.route().get(query).execute().try_collect().await.map_err(netlink("listing routes"))?;
        routes.extend(messages.iter().filter_map(|m| pod_route(m, index)));
    }
    Ok(routes)
}

fn pod_route(m: &RouteMessage, index: u32) -> Option<Route> {
    let attr_table = m.attributes.iter().find_map(|a| if let RouteAttribute::Table(t) = a { Some(*t) } else { None });
    if attr_table.unwrap_or(u32::from(m.header.table)) != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let oif = m.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
    if oif != Some(index) {
        return None;
    }
    let dest = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_ip(d),
        _ => None,
    });
    if let Some(IpAddr::V6(v6)) = dest {
        // fe80::/64 and ff00::/8 are the kernel's, recreated in the guest.
        if v6.segments()[0] & 0xffc0 == 0xfe80 || v6.segments()[0] & 0xff00 == 0xff00 {
            return None;
        }
    }
    let gateway = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_ip(g),
        _ => None,
    });
    let source = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::PrefSource(s) => route_ip(s),
        _ => None,
    });
    let dest = dest.map(|addr| IpNet { addr, prefix: m.header.destination_prefix_length });
    Some(Route { dest, gateway, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_named() {
        let err = attach(Path::new("/nonexistent/netns")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }
}
