# Shared helpers for the kata-like scripts (sourced, not run).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export KATA_LIKE_CACHE=${KATA_LIKE_CACHE:-$HOME/.cache/kata-like}
ARTIFACTS=$KATA_LIKE_CACHE/artifacts
# Host binaries (release) and the static guest agent (own target dir, so the
# crt-static flags never invalidate the host build).
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GUEST_TARGET_DIR=$TARGET_DIR/guest
# The VMM as it runs: static-pie (own target dir, like the agent's),
# installed by content into the cache and linked from the artefacts dir.
STATIC_TARGET_DIR=$TARGET_DIR/static
STATIC_VMM_BIN=$STATIC_TARGET_DIR/x86_64-unknown-linux-gnu/release/kata-like-vmm
# virtiofsd from crates.io, cached by version outside the repository.
VIRTIOFSD_VERSION=1.14.0
VIRTIOFSD_ROOT=$KATA_LIKE_CACHE/virtiofsd/$VIRTIOFSD_VERSION
VIRTIOFSD=$VIRTIOFSD_ROOT/bin/virtiofsd
AGENT_BIN=$GUEST_TARGET_DIR/x86_64-unknown-linux-gnu/guest/kata-like-agent

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" = 0 ] || die "$1 needs root (apt, /dev/kvm); run it with sudo"
}
