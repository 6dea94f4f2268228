#!/usr/bin/env bash
# Builds a minimal OCI image (image-layout tarball, importable with
# `ctr image import`) from Debian's static busybox: no registry is reachable
# here, and a static binary keeps the image independent of the host libc.
#   scripts/make-busybox-image.sh OUT.tar   -> prints OUT.tar
# Reproducible (fixed mtimes, sorted entries); rebuilt only when busybox changes.
set -euo pipefail
out=${1:?usage: make-busybox-image.sh OUT.tar}
busybox=/bin/busybox
stamp="$out.busybox-sha256"
sum=$(sha256sum "$busybox" | cut -c1-64)
if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sum" ]; then echo "$out"; exit 0; fi
mkdir -p "$(dirname "$out")"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root,home/user,var,run}
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n' > "$root/etc/group"
chown 1000:1000 "$root/home/user"
layer=$work/layer.tar
tar --sort=name --mtime=@0 --numeric-owner -C "$root" -cf "$layer" .
layer_sum=$(sha256sum "$layer" | cut -c1-64)
layer_size=$(stat -c %s "$layer")
blobs=$work/oci/blobs/sha256
mkdir -p "$blobs"
cp "$layer" "$blobs/$layer_sum"
config='{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:'$layer_sum'"]},"history":[{"created_by":"kata-like scripts/make-busybox-image.sh"}]}'
printf '%s' "$config" > "$work/config.json"
config_sum=$(sha256sum "$work/config.json" | cut -c1-64)
config_size=$(stat -c %s "$work/config.json")
cp "$work/config.json" "$blobs/$config_sum"
manifest='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'$config_sum'","size":'$config_size'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:'$layer_sum'","size":'$layer_size'}]}'
printf '%s' "$manifest" > "$work/manifest.json"
manifest_sum=$(sha256sum "$work/manifest.json" | cut -c1-64)
manifest_size=$(stat -c %s "$work/manifest.json")
cp "$work/manifest.json" "$blobs/$manifest_sum"
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"docker.io/library/kata-like-busybox:latest","org.opencontainers.image.ref.name":"latest"}}]}' \
    "$manifest_sum" "$manifest_size" > "$work/oci/index.json"
tar --sort=name --mtime=@0 --numeric-owner -C "$work/oci" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$sum" > "$stamp"
echo "$out"
