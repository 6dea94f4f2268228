#!/usr/bin/env bash
# Builds the kata-like guest kernel: an uncompressed vmlinux with a PVH entry.
#
#   guest-kernel/build.sh [--print-path] [--jobs N]
#
# Source: Debian's linux-source-6.1 package (installed by scripts/setup.sh).
# The result is cached outside the repository, keyed by a hash of every input
# (source package version, fragments, patches, config version, this script),
# so a second run is instant and a changed input builds a new kernel:
#   ${KATA_LIKE_CACHE:-~/.cache/kata-like}/kernel/<hash>/{vmlinux,bzImage,config,System.map}
# The build tree is kept per (source version, patches) for incremental builds;
# trees of other patch sets are removed after a successful build.
# With --print-path only the vmlinux path is printed on stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KATA_LIKE_CACHE:-$HOME/.cache/kata-like}
jobs=$(nproc)
print_path=0
while [ $# -gt 0 ]; do
    case "$1" in
        --print-path) print_path=1 ;;
        --jobs) jobs=$2; shift ;;
        *) echo "build.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
    shift
done
log() { echo "guest-kernel: $*" >&2; }

src_pkg=linux-source-6.1
tarball=/usr/src/$src_pkg.tar.xz
[ -f "$tarball" ] || { log "missing $tarball: install Debian's $src_pkg (scripts/setup.sh does)"; exit 1; }
src_version=$(dpkg-query -W -f '${Version}' "$src_pkg")
config_version=$(tr -d '[:space:]' < "$here/config-version")
fragments=("$here/configs/common.conf" "$here/configs/x86_64.conf")
patches=("$here"/patches/*.patch)

patch_key=$( { echo "$src_version"; cat "${patches[@]}"; } | sha256sum | cut -c1-16)
key=$( { echo "$src_version"; echo "$config_version"; cat "${fragments[@]}" "${patches[@]}" "$0"; } | sha256sum | cut -c1-16)
out=$cache/kernel/$key
if [ -f "$out/vmlinux" ]; then
    log "cached: $out/vmlinux"
    [ $print_path = 1 ] && echo "$out/vmlinux"
    exit 0
fi

tree=$cache/kernel-build/$src_pkg-$patch_key
if [ ! -f "$tree/.kata-like-prepared" ]; then
    log "extracting $tarball (source $src_version) into $tree"
    rm -rf "$tree" && mkdir -p "$tree"
    tar -xf "$tarball" -C "$tree" --strip-components=1
    for p in "${patches[@]}"; do
        log "applying $(basename "$p")"
        patch -d "$tree" -p1 --forward --quiet < "$p"
    done
    touch "$tree/.kata-like-prepared"
fi

log "configuring: tinyconfig + $(for f in "${fragments[@]}"; do basename "$f"; done | tr '\n' ' ')"
make -C "$tree" -s tinyconfig >&2
"$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" "${fragments[@]}" >/dev/null
"$tree/scripts/config" --file "$tree/.config" --set-str LOCALVERSION "-kata-like.$config_version"
make -C "$tree" -s olddefconfig >&2

# Kconfig silently drops options whose dependencies are unmet: check that
# every fragment line survived, so a missing feature fails the build here
# instead of failing inside a booted guest.
bad=0
while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    opt=${line%%=*}; want=${line#*=}
    have=$(grep -E "^$opt=" "$tree/.config" | head -1 | cut -d= -f2- || true)
    if [ "$want" = n ]; then
        [ -z "$have" ] || { log "$opt: wanted n, got $have"; bad=1; }
    elif [ "$have" != "$want" ]; then
        log "$opt: wanted $want, got ${have:-unset} (a dependency is missing)"; bad=1
    fi
done < <(cat "${fragments[@]}")
[ $bad = 0 ] || { log "configuration does not match the fragments"; exit 1; }

log "building vmlinux and bzImage with -j$jobs in $tree (minutes on a cold tree)"
make -C "$tree" -s -j"$jobs" vmlinux bzImage >&2

mkdir -p "$out.tmp"
cp "$tree/vmlinux" "$tree/System.map" "$tree/arch/x86/boot/bzImage" "$out.tmp/"
cp "$tree/.config" "$out.tmp/config"
echo "$(make -C "$tree" -s kernelrelease)" > "$out.tmp/release"
rm -rf "$out" && mv "$out.tmp" "$out"
log "built $out/vmlinux ($(cat "$out/release"))"
# Build trees of other patch sets are 1.5 GiB each and never reused.
for stale in "$cache"/kernel-build/*; do
    [ "$stale" = "$tree" ] || rm -rf "$stale"
done
[ $print_path = 1 ] && echo "$out/vmlinux"
exit 0
