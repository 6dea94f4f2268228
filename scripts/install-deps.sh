#!/usr/bin/env bash
# Installs the Debian packages kata-like needs to build and test, if missing.
#   kernel build: build-essential flex bison bc libelf-dev libssl-dev linux-source-6.1
#   guest image:  busybox-static (static tools inside the guest)
#   benchmarks:   qemu-system-x86 (the side-by-side baseline), strace
#   containers:   containerd runc (the real containerd our shim plugs into; runc is
#                 the side-by-side baseline), libseccomp-dev libcap-ng-dev pkg-config
#                 (to build virtiofsd)
#   networking:   iproute2 (ip, tc: the pod-network and virtio-net tests),
#                 containernetworking-plugins (bridge, host-local, loopback: CNI for the CRI tests),
#                 iptables (the shim's port-forward redirect in a pod's network namespace)
#   CRI tests:    protobuf-compiler (the k8s-cri crate generates its client with protoc)
#   Docker/podman: docker.io podman (the clients of the runc-compatible CLI, tested
#                 against the real ones), netavark aardvark-dns (podman's networks)
# and virtiofsd itself from crates.io, cached outside the repository by version.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "scripts/install-deps.sh"

packages=(build-essential flex bison bc libelf-dev libssl-dev linux-source-6.1 busybox-static qemu-system-x86 cpio
          containerd runc libseccomp-dev libcap-ng-dev pkg-config iproute2
          containernetworking-plugins protobuf-compiler iptables
          debootstrap   # debootstrap: the real-workload test image
          docker.io podman netavark aardvark-dns)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "Debian packages present"
fi
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup)"

# virtiofsd: the real vhost-user virtio-fs daemon, built once per version into
# $KATA_LIKE_CACHE/virtiofsd/<version>/bin (scripts/lib.sh: VIRTIOFSD).
if [ ! -x "$VIRTIOFSD" ]; then
    say "building virtiofsd $VIRTIOFSD_VERSION (cargo install, once per version; a few minutes)"
    cargo install --quiet --locked --version "=$VIRTIOFSD_VERSION" --root "$VIRTIOFSD_ROOT" virtiofsd
else
    say "virtiofsd $VIRTIOFSD_VERSION present (cached)"
fi
