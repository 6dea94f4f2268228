//! ConfigureNetwork: the pod's interface and routes, applied over rtnetlink.
//!
//! The agent is synchronous and small, so it speaks netlink through
//! `netlink-sys`'s blocking socket with `netlink-packet-route` messages
//! rather than the async `rtnetlink` crate (which would pull a runtime into
//! PID 1). Each request asks for an ACK; an address or route that already
//! exists (the kernel adds the prefix route of an address itself) is fine.

use std::net::IpAddr;

use kata_like_protocol::agent::{ConfigureNetworkRequest, IpNet, NetInterface, NetRoute};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Most interfaces and routes one request may carry.
const MAX_ITEMS: usize = 64;

struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    fn open() -> Result<Netlink, String> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| format!("netlink socket: {e}"))?;
        socket.bind_auto().map_err(|e| format!("netlink bind: {e}"))?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(|e| format!("netlink connect: {e}"))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends `message` and collects the replies until the ACK (or, for a
    /// dump, the end). An error reply becomes Err with errno.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, i32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let mut replies = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            let mut offset = 0;
            while offset < data.len() {
                let reply =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..]).map_err(|_| libc::EBADMSG)?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(libc::EBADMSG);
                }
                offset += len.next_multiple_of(4);
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(-code.get()),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Like [`Netlink::request`] for a change, with `what` named in errors
    /// and EEXIST accepted.
    fn change(&mut self, what: &str, message: RouteNetlinkMessage, flags: u16) -> Result<(), String> {
        match self.request(message, flags) {
            Ok(_) | Err(libc::EEXIST) => Ok(()),
            Err(errno) => Err(format!("{what}: {}", std::io::Error::from_raw_os_error(errno))),
        }
    }
}

fn parse_ip(text: &str, what: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| format!("{what} {text:?} is not an IP address"))
}

fn parse_net(net: &IpNet, what: &str) -> Result<(IpAddr, u8), String> {
    let addr = parse_ip(&net.address, what)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if net.prefix > max {
        return Err(format!("{what} {}/{}: prefix longer than {max}", net.address, net.prefix));
    }
    Ok((addr, net.prefix as u8))
}

fn parse_mac(text: &str) -> Option<Vec<u8>> {
    let bytes: Vec<u8> = text.split(':').map(|p| u8::from_str_radix(p, 16).ok()).collect::<Option<_>>()?;
    (bytes.len() == 6 && text.len() == 17).then_some(bytes)
}

fn family(addr: &IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Checks the whole request before anything changes.
fn validate(req: &ConfigureNetworkRequest) -> Result<(), String> {
    if req.interfaces.len() > MAX_ITEMS || req.routes.len() > MAX_ITEMS {
        return Err(format!("at most {MAX_ITEMS} interfaces and {MAX_ITEMS} routes"));
    }
    for (i, iface) in req.interfaces.iter().enumerate() {
        if parse_mac(&iface.mac).is_none() {
            return Err(format!("interfaces[{i}].mac {:?} is not aa:bb:cc:dd:ee:ff", iface.mac));
        }
        if !iface.new_mac.is_empty() && parse_mac(&iface.new_mac).is_none() {
            return Err(format!("interfaces[{i}].new_mac {:?} is not aa:bb:cc:dd:ee:ff", iface.new_mac));
        }
        if iface.name.is_empty() || iface.name.len() > 15 || iface.name.contains(['/', ' ', '\0']) {
            return Err(format!("interfaces[{i}].name {:?} is not an interface name", iface.name));
        }
        if iface.mtu != 0 && !(68..=65_535).contains(&iface.mtu) {
            return Err(format!("interfaces[{i}].mtu {} is out of range (68..=65535)", iface.mtu));
        }
        for a in &iface.addresses {
            parse_net(a, &format!("interfaces[{i}] address"))?;
        }
    }
    for (i, route) in req.routes.iter().enumerate() {
        let what = format!("routes[{i}]");
        if !req.interfaces.iter().any(|iface| iface.name == route.device) {
            return Err(format!("{what}.device {:?} is none of the request's interfaces", route.device));
        }
        if let Some(dest) = route.dest.as_ref() {
            parse_net(dest, &format!("{what}.dest"))?;
        }
        if !route.gateway.is_empty() {
            parse_ip(&route.gateway, &format!("{what}.gateway"))?;
        }
        if !route.source.is_empty() {
            parse_ip(&route.source, &format!("{what}.source"))?;
        }
    }
    Ok(())
}

/// Why a ConfigureNetwork request failed.
#[derive(Debug)]
pub enum NetworkError {
    /// The request is malformed; nothing was changed.
    Invalid(String),
    /// The kernel refused a step (named).
    Failed(String),
}

/// Sets the loopback interface up: the guest kernel leaves it down, and a
/// pod's containers talk to each other over it.
pub fn loopback_up() -> Result<(), String> {
    let mut nl = Netlink::open()?;
    let links = nl
        .request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)
        .map_err(|errno| format!("listing links: {}", std::io::Error::from_raw_os_error(errno)))?;
    let lo = links
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) if l.attributes.contains(&LinkAttribute::IfName("lo".into())) => {
                Some(l.header.index)
            }
            _ => None,
        })
        .ok_or("no loopback interface")?;
    let mut up = LinkMessage::default();
    up.header.index = lo;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    nl.change("setting lo up", RouteNetlinkMessage::SetLink(up), 0)
}

/// Applies a ConfigureNetwork request.
pub fn configure(req: &ConfigureNetworkRequest) -> Result<(), NetworkError> {
    validate(req).map_err(NetworkError::Invalid)?;
    apply(req).map_err(NetworkError::Failed)
}

fn apply(req: &ConfigureNetworkRequest) -> Result<(), String> {
    let mut nl = Netlink::open()?;
    let links = nl
        .request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)
        .map_err(|errno| format!("listing links: {}", std::io::Error::from_raw_os_error(errno)))?;
    let mut indices = Vec::new();
    for iface in &req.interfaces {
        let index = configure_interface(&mut nl, &links, iface)?;
        indices.push((iface.name.as_str(), index));
    }
    for route in &req.routes {
        let index = indices.iter().find(|(n, _)| *n == route.device).map(|(_, i)| *i).unwrap_or(0);
        add_route(&mut nl, route, index)?;
    }
    Ok(())
}

fn configure_interface(nl: &mut Netlink, links: &[RouteNetlinkMessage], iface: &NetInterface) -> Result<u32, String> {
    let mac = parse_mac(&iface.mac).unwrap_or_default();
    let link = links
        .iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) if l.attributes.contains(&LinkAttribute::Address(mac.clone())) => Some(l),
            _ => None,
        })
        .ok_or_else(|| format!("no guest interface has MAC {}", iface.mac))?;
    let index = link.header.index;
    let name = &iface.name;
    let current = link.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n) } else { None });
    let new_mac = parse_mac(&iface.new_mac).filter(|new| *new != mac);
    if current != Some(name) || new_mac.is_some() {
        // A name (and, for a NIC without live address change, a MAC)
        // changes only while the link is down.
        let mut down = LinkMessage::default();
        down.header.index = index;
        down.header.change_mask = LinkFlags::Up;
        nl.change(&format!("taking link {index} down"), RouteNetlinkMessage::SetLink(down), 0)?;
    }
    if let Some(new) = new_mac {
        let mut readdress = LinkMessage::default();
        readdress.header.index = index;
        readdress.attributes.push(LinkAttribute::Address(new));
        nl.change(
            &format!("changing link {index}'s MAC from {} to {}", iface.mac, iface.new_mac),
            RouteNetlinkMessage::SetLink(readdress),
            0,
        )?;
    }
    if current != Some(name) {
        let mut rename = LinkMessage::default();
        rename.header.index = index;
        rename.attributes.push(LinkAttribute::IfName(name.clone()));
        nl.change(&format!("renaming link {index} to {name}"), RouteNetlinkMessage::SetLink(rename), 0)?;
    }
    let mut up = LinkMessage::default();
    up.header.index = index;
    up.header.flags = LinkFlags::Up;
    up.header.change_mask = LinkFlags::Up;
    if iface.mtu != 0 {
        up.attributes.push(LinkAttribute::Mtu(iface.mtu));
    }
    nl.change(&format!("setting {name} up (MTU {})", iface.mtu), RouteNetlinkMessage::SetLink(up), 0)?;
    for net in &iface.addresses {
        let (addr, prefix) = parse_net(net, "address")?;
        let mut message = AddressMessage::default();
        message.header.family = family(&addr);
        message.header.prefix_len = prefix;
        message.header.index = index;
        message.attributes.push(AddressAttribute::Local(addr));
        message.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            // The pod's address is already its own (CNI checked it): no
            // duplicate address detection, which would keep it unusable
            // ("tentative") for a second or more.
            message.attributes.push(AddressAttribute::Flags(netlink_packet_route::address::AddressFlags::Nodad));
        }
        nl.change(
            &format!("adding {addr}/{prefix} to {name}"),
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )?;
    }
    Ok(index)
}

fn add_route(nl: &mut Netlink, route: &NetRoute, index: u32) -> Result<(), String> {
    let dest = route.dest.as_ref().map(|d| parse_net(d, "dest")).transpose()?;
    let gateway = (!route.gateway.is_empty()).then(|| parse_ip(&route.gateway, "gateway")).transpose()?;
    let source = (!route.source.is_empty()).then(|| parse_ip(&route.source, "source")).transpose()?;
    let any = dest.map(|(a, _)| a).or(gateway).or(source);
    let family = any.as_ref().map(family).unwrap_or(AddressFamily::Inet);
    let mut message = RouteMessage::default();
    message.header.address_family = family;
    message.header.destination_prefix_length = dest.map(|(_, p)| p).unwrap_or(0);
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Boot;
    message.header.scope = if gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
    message.header.kind = RouteType::Unicast;
    if let Some((addr, _)) = dest {
        message.attributes.push(RouteAttribute::Destination(RouteAddress::from(addr)));
    }
    if let Some(gw) = gateway {
        message.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    if let Some(src) = source {
        message.attributes.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
    }
    message.attributes.push(RouteAttribute::Oif(index));
    let shown = match dest {
        Some((a, p)) => format!("{a}/{p}"),
        None => "default".to_string(),
    };
    nl.change(
        &format!("adding route {shown} via {:?} dev {}", route.gateway, route.device),
        RouteNetlinkMessage::NewRoute(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(mac: &str, name: &str, mtu: u32, addrs: &[(&str, u32)]) -> NetInterface {
        let mut i = NetInterface::new();
        i.mac = mac.into();
        i.name = name.into();
        i.mtu = mtu;
        i.addresses = addrs
            .iter()
            .map(|(a, p)| {
                let mut n = IpNet::new();
                n.address = (*a).into();
                n.prefix = *p;
                n
            })
            .collect();
        i
    }

    #[test]
    fn requests_are_checked_before_anything_changes() {
        let good = iface("02:00:0a:d7:00:02", "eth0", 1500, &[("10.215.0.2", 24), ("fd00::2", 64)]);
        let mut req = ConfigureNetworkRequest::new();
        req.interfaces = vec![good.clone()];
        let mut route = NetRoute::new();
        route.device = "eth0".into();
        route.gateway = "10.215.0.1".into();
        req.routes = vec![route.clone()];
        validate(&req).expect("valid");

        let cases: Vec<(ConfigureNetworkRequest, &str)> = vec![
            {
                let mut r = req.clone();
                r.interfaces[0].mac = "02:00:0a:d7:00".into();
                (r, "interfaces[0].mac")
            },
            {
                let mut r = req.clone();
                r.interfaces[0].new_mac = "02:00:0a:d7:00:02:03".into();
                (r, "interfaces[0].new_mac")
            },
            {
                let mut r = req.clone();
                r.interfaces[0].name = "a/b".into();
                (r, "interfaces[0].name")
            },
            {
                let mut r = req.clone();
                r.interfaces[0].mtu = 20;
                (r, "interfaces[0].mtu 20")
            },
            {
                let mut r = req.clone();
                r.interfaces[0] = iface("02:00:0a:d7:00:02", "eth0", 0, &[("10.215.0.2", 33)]);
                (r, "prefix longer than 32")
            },
            {
                let mut r = req.clone();
                r.interfaces[0] = iface("02:00:0a:d7:00:02", "eth0", 0, &[("10.215.0.300", 24)]);
                (r, "is not an IP address")
            },
            {
                let mut r = req.clone();
                r.routes[0].device = "eth1".into();
                (r, "routes[0].device \"eth1\"")
            },
            {
                let mut r = req.clone();
                r.routes[0].gateway = "gw".into();
                (r, "routes[0].gateway")
            },
        ];
        for (bad, wanted) in cases {
            let err = validate(&bad).unwrap_err();
            assert!(err.contains(wanted), "{wanted}: {err}");
        }
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:00:0a:d7:00:02"), Some(vec![2, 0, 0x0a, 0xd7, 0, 2]));
        for bad in ["", "2:0:a:d7:0:2", "02:00:0a:d7:00", "02:00:0a:d7:00:02:03", "zz:00:0a:d7:00:02"] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
