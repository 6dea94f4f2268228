#!/usr/bin/env bash
# Builds the real-workload test image (OCI image layout tarball, importable
# with `ctr image import`): Debian bookworm (debootstrap, minbase) with
# nginx (Debian's default site), redis, postgresql, python3 and iptables,
# plus tests/workloads/check.sh, the scripted checks that
# tests/tests/workloads.rs runs under runc and kata-like alike.
#   scripts/make-workload-image.sh OUT.tar   -> prints OUT.tar
# Cached: rebuilt only when this script, the package list or the checks
# change (the Debian mirror is not pinned: a rebuild takes today's
# bookworm point release).
set -euo pipefail
out=${1:?usage: make-workload-image.sh OUT.tar}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
checks=$here/../tests/workloads/check.sh
packages=nginx-light,redis-server,redis-tools,postgresql,python3,iptables,procps,curl
mirror=${KATA_LIKE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
stamp="$out.inputs-sha256"
sum=$(cat "${BASH_SOURCE[0]}" "$checks" <(echo "$packages") | sha256sum | cut -c1-64)
if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then echo "$out"; exit 0; fi
command -v debootstrap >/dev/null || { echo "make-workload-image.sh: debootstrap is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
work=$(mktemp -d); trap 'umount -R "$work/rootfs/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
root=$work/rootfs
echo "make-workload-image.sh: debootstrap bookworm with $packages (a few minutes)" >&2
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
# What a registry image would not carry: the package cache, docs, the
# cluster postinst made (the checks run initdb themselves).
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/var/lib/postgresql/15/main "$root"/etc/postgresql/15/main
install -m 0755 "$checks" "$root/usr/local/bin/check.sh"
layer=$work/layer.tar
tar --sort=name --mtime=@0 --numeric-owner --xattrs --xattrs-include='security.capability' -C "$root" -cf "$layer" .
blobs=$work/oci/blobs/sha256
mkdir -p "$blobs"
blob() { local d; d=$(sha256sum "$1" | cut -c1-64); cp "$1" "$blobs/$d"; echo "$d $(stat -c %s "$1")"; }
read -r layer_sum layer_size < <(blob "$layer")
printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/bash"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$layer_sum" > "$work/config.json"
read -r config_sum config_size < <(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config_sum" "$config_size" "$layer_sum" "$layer_size" > "$work/manifest.json"
read -r manifest_sum manifest_size < <(blob "$work/manifest.json")
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"docker.io/library/kata-like-workloads:bookworm","org.opencontainers.image.ref.name":"bookworm"}}]}' \
    "$manifest_sum" "$manifest_size" > "$work/oci/index.json"
tar --sort=name --mtime=@0 --numeric-owner -C "$work/oci" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$sum" > "$stamp"
echo "$out"
