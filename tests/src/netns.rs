//! A network namespace left the way CNI's bridge plugin leaves one: a veth
//! `eth0` with the pod's address and a default route, its peer on the host
//! holding the gateway address. For tests that give a sandbox a pod NIC
//! without containerd's CRI plugin (`ctr run --with-ns network:…`, or the
//! runtime's `network::attach` directly).

use crate::ip;

/// A named network namespace with a veth into it, removed on drop.
#[derive(Debug)]
pub struct PodNetns {
    /// The namespace's name (`ip netns`).
    pub name: String,
    /// The veth's host end.
    pub host_end: String,
}

impl PodNetns {
    /// Namespace `kltest{tag}`: `eth0` in it holds `pod_cidr` with a default
    /// route via `gateway`; the host end `klh{tag}` holds `host_cidr`.
    pub fn create(tag: u32, host_cidr: &str, pod_cidr: &str, gateway: &str) -> Result<PodNetns, String> {
        let ns = PodNetns { name: format!("kltest{tag}"), host_end: format!("klh{tag}") };
        // A namespace of that name left by an earlier, killed run.
        let _ = ip(&["netns", "del", &ns.name]);
        ip(&["netns", "add", &ns.name])?;
        ip(&["link", "add", &ns.host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns.name])?;
        ip(&["addr", "add", host_cidr, "dev", &ns.host_end])?;
        ip(&["link", "set", &ns.host_end, "up"])?;
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "addr", "add", pod_cidr, "dev", "eth0"])?;
        ip(&["-n", n, "link", "set", "eth0", "up"])?;
        ip(&["-n", n, "route", "add", "default", "via", gateway])?;
        Ok(ns)
    }

    /// Its path, as a spec's network namespace names it.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_end]);
    }
}
