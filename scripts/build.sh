#!/usr/bin/env bash
# Builds everything kata-like runs, each step cached:
#   host binaries (release):  kata-like, kata-like-image-builder, shim (and a
#                             dynamic kata-like-vmm for cargo's own tests)
#   the VMM that runs VMs:    static-pie kata-like-vmm, copied into the
#                             cache by content ($ARTIFACTS/kata-like-vmm)
#   guest kernel:             guest-kernel/build.sh (cached by input hash)
#   static agent + initramfs: cached by input hash
# and points $KATA_LIKE_CACHE/artifacts/ at the current kernel and initramfs.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

say "building host binaries (release)"
cargo build --release --workspace --bins

say "building the static VMM"
# Static-pie: no libc or ld.so mapped beside it (1.2 MiB of a VMM's own RSS,
# docs/benchmarks.md "VMM memory overhead") while keeping ASLR for the
# process the guest attacks first (non-PIE saved 0.2 MiB more; not worth a
# fixed code address). --target keeps the flag off build scripts and proc
# macros, which cannot be static.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --target x86_64-unknown-linux-gnu -p kata-like-vmm --bin kata-like-vmm \
    --target-dir "$STATIC_TARGET_DIR"
vmm_key=$(sha256sum "$STATIC_VMM_BIN" | cut -c1-16)
vmm_dir=$KATA_LIKE_CACHE/vmm/$vmm_key
if [ ! -x "$vmm_dir/kata-like-vmm" ]; then
    mkdir -p "$vmm_dir"
    cp "$STATIC_VMM_BIN" "$vmm_dir/kata-like-vmm.tmp"
    mv "$vmm_dir/kata-like-vmm.tmp" "$vmm_dir/kata-like-vmm"
fi
touch "$vmm_dir"
# Builds not used for two weeks go (another clone may still use a newer one).
find "$KATA_LIKE_CACHE/vmm" -mindepth 1 -maxdepth 1 -type d -mtime +14 ! -name "$vmm_key" \
    -exec rm -rf {} + 2>/dev/null || true

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
ln -sfn "$vmm_dir/kata-like-vmm" "$ARTIFACTS/kata-like-vmm"

# containerd finds shims on its PATH: link ours (and the tools) there.
for bin in containerd-shim-kata-like-v2 kata-like; do
    ln -sfn "$TARGET_DIR/release/$bin" "/usr/local/bin/$bin" 2>/dev/null || true
done
ln -sfn "$ARTIFACTS/kata-like-vmm" /usr/local/bin/kata-like-vmm 2>/dev/null || true

say "building the busybox test image (cached)"
"$ROOT/scripts/make-busybox-image.sh" "$KATA_LIKE_CACHE/images/busybox.tar" >/dev/null
say "building the real-workload test image (cached; debootstrap, minutes the first time)"
"$ROOT/scripts/make-workload-image.sh" "$KATA_LIKE_CACHE/images/workloads.tar" >/dev/null
