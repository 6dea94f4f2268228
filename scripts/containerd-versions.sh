#!/usr/bin/env bash
# The containerd version matrix: the system's containerd (Debian 12:
# 1.6.x) plus whatever Debian 13 (trixie: 1.7.x) and Debian unstable (sid:
# 2.x) have now, fetched with `apt-get download` through a private apt
# configuration (the system's sources and packages stay untouched) and
# unpacked with `dpkg -x` into $KATA_LIKE_CACHE/containerd/<version>/ (keyed
# by the package version, so a new upload is fetched once).
#
#   scripts/containerd-versions.sh        prints "VERSION BINDIR" per version
#
# Suites: $KATA_LIKE_CONTAINERD_SUITES (default "trixie sid"). BINDIR holds
# containerd, ctr and containerd-shim-runc-v2.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

system=$(command -v containerd) || die "containerd is not installed (scripts/install-deps.sh)"
echo "$(dpkg-query -W -f '${Version}' containerd 2>/dev/null || containerd --version | awk '{print $3}') $(dirname "$system")"

base=$KATA_LIKE_CACHE/containerd
for suite in ${KATA_LIKE_CONTAINERD_SUITES:-trixie sid}; do
    apt_dir=$base/apt-$suite
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
    echo "deb http://deb.debian.org/debian $suite main" >"$apt_dir/sources.list"
    opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir"
          -o "Dir::Cache::archives=$apt_dir/archives" -o APT::Sandbox::User=root -qq)
    apt-get "${opts[@]}" update >&2 || die "apt-get update for Debian $suite failed"
    version=$(apt-cache "${opts[@]}" madison containerd | awk -F'|' -v s="$suite" '$3 ~ s {gsub(/ /, "", $2); print $2; exit}')
    [ -n "$version" ] || die "Debian $suite has no containerd package"
    dest=$base/$version
    if [ ! -x "$dest/usr/bin/containerd" ]; then
        say "fetching containerd $version from Debian $suite"
        (cd "$apt_dir/archives" && rm -f containerd_*.deb && apt-get "${opts[@]}" download "containerd=$version" >&2)
        rm -rf "$dest.tmp"
        dpkg -x "$apt_dir"/archives/containerd_*.deb "$dest.tmp"
        mv "$dest.tmp" "$dest"
    fi
    echo "$version $dest/usr/bin"
done
