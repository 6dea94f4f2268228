#!/usr/bin/env bash
# Builds everything kata-like runs, each step cached:
#   host binaries (release):  kata-like-vmm, kata-like, kata-like-image-builder, shim
#   guest kernel:             guest-kernel/build.sh (cached by input hash)
#   static agent + initramfs: cached by input hash
# and points $KATA_LIKE_CACHE/artifacts/ at the current kernel and initramfs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

say "building host binaries (release)"
cargo build --release --workspace --bins

say "building the guest kernel (cached)"
kernel=$(guest-kernel/build.sh --print-path)

say "building the static guest agent"
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
    cargo build --profile guest --target x86_64-unknown-linux-gnu -p kata-like-agent --target-dir "$GUEST_TARGET_DIR"

say "building the guest initramfs (cached)"
initrd=$("$TARGET_DIR/release/kata-like-image-builder" --agent "$AGENT_BIN" --busybox /bin/busybox \
    --cache-dir "$KATA_LIKE_CACHE/initrd")

mkdir -p "$ARTIFACTS"
kdir=$(dirname "$kernel")
for f in vmlinux bzImage System.map; do ln -sfn "$kdir/$f" "$ARTIFACTS/$f"; done
ln -sfn "$initrd" "$ARTIFACTS/initrd.cpio"
say "artifacts: $ARTIFACTS -> kernel $(cat "$kdir/release"), $(basename "$(dirname "$initrd")")/initrd.cpio"
[ -x "$VIRTIOFSD" ] && ln -sfn "$VIRTIOFSD" "$ARTIFACTS/virtiofsd"

# containerd finds shims on its PATH: link ours (and the tools) there.
for bin in containerd-shim-kata-like-v2 kata-like kata-like-vmm; do
    ln -sfn "$TARGET_DIR/release/$bin" "/usr/local/bin/$bin" 2>/dev/null || true
done

say "building the busybox test image (cached)"
"$ROOT/scripts/make-busybox-image.sh" "$KATA_LIKE_CACHE/images/busybox.tar" >/dev/null
say "building the real-workload test image (cached; debootstrap, minutes the first time)"
"$ROOT/scripts/make-workload-image.sh" "$KATA_LIKE_CACHE/images/workloads.tar" >/dev/null
