#!/usr/bin/env bash
# Installs the Debian packages kata-like needs to build and test, if missing.
#   kernel build: build-essential flex bison bc libelf-dev libssl-dev linux-source-6.1
#   guest image:  busybox-static (static tools inside the guest)
#   benchmarks:   qemu-system-x86 (the side-by-side baseline), strace
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "scripts/install-deps.sh"

packages=(build-essential flex bison bc libelf-dev libssl-dev linux-source-6.1 busybox-static qemu-system-x86 cpio)
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
