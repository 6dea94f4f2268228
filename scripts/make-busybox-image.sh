#!/usr/bin/env bash
# Builds a minimal OCI image (image-layout tarball, importable with
# `ctr image import`) from Debian's static busybox: no registry is reachable
# here, and a static binary keeps the image independent of the host libc.
#   scripts/make-busybox-image.sh OUT.tar   -> prints OUT.tar
# Two tags share the layer: `latest` (root, cwd /) and `user` (the image
# config sets User user = 1000:1000 and WorkingDir /home/user), so tests
# see an image's user and cwd reach the guest through the OCI spec.
# Reproducible (fixed mtimes, sorted entries); rebuilt only when busybox or
# this script changes.
set -euo pipefail
out=${1:?usage: make-busybox-image.sh OUT.tar}
busybox=/bin/busybox
stamp="$out.busybox-sha256"
sum=$(cat "$busybox" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-64)
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
# add_blob FILE -> prints "DIGEST SIZE" after copying FILE into the layout.
add_blob() {
    local d; d=$(sha256sum "$1" | cut -c1-64)
    cp "$1" "$blobs/$d"
    echo "$d $(stat -c %s "$1")"
}
# manifest_for TAG USER WORKDIR -> prints an index.json manifest entry.
manifest_for() {
    local user=""
    [ -n "$2" ] && user='"User":"'$2'",'
    printf '{"architecture":"amd64","os":"linux","config":{%s"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":%s,"WorkingDir":"%s"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"kata-like scripts/make-busybox-image.sh"}]}' \
        "$user" "$4" "$3" "$layer_sum" > "$work/config-$1.json"
    read -r config_sum config_size < <(add_blob "$work/config-$1.json")
    printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
        "$config_sum" "$config_size" "$layer_sum" "$layer_size" > "$work/manifest-$1.json"
    read -r manifest_sum manifest_size < <(add_blob "$work/manifest-$1.json")
    printf '{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"docker.io/library/kata-like-busybox:%s","org.opencontainers.image.ref.name":"%s"}}' \
        "$manifest_sum" "$manifest_size" "$1" "$1"
}
latest=$(manifest_for latest "" / '["/bin/sh"]')
user=$(manifest_for user user /home/user '["/bin/sh"]')
# A pod sandbox ("pause") image for the CRI tests' runc baseline: it must
# keep running, as registry.k8s.io/pause does (no registry is reachable).
pause=$(manifest_for pause "" / '["/bin/sleep","2147483647"]')
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci/oci-layout"
printf '{"schemaVersion":2,"manifests":[%s,%s,%s]}' "$latest" "$user" "$pause" > "$work/oci/index.json"
tar --sort=name --mtime=@0 --numeric-owner -C "$work/oci" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$sum" > "$stamp"
echo "$out"
