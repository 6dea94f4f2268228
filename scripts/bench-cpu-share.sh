#!/usr/bin/env bash
# How a microVM's start scales with the CPU share it gets: one
# `kata-like run … echo hi` per share, the VMM and virtiofsd in a cgroup
# capped by CFS quota (through the spec's cgroupsPath). Prints the wall
# time and the CPU time the run used. Usage: sudo scripts/bench-cpu-share.sh [PERCENT…]
# (default 40 20). Needs the cgroup v1 cpu hierarchy or cgroup v2.
source "$(dirname "$0")/lib.sh"
need_root "scripts/bench-cpu-share.sh"
shares=("$@")
[ ${#shares[@]} -gt 0 ] || shares=(40 20)
cli=$ROOT/target/release/kata-like
[ -x "$cli" ] || die "build first: scripts/build.sh"

work=$(mktemp -d /tmp/kl-cpu-share-XXXXXX)
cleanup() {
    # The runtime creates the parent in every hierarchy it joins.
    for p in "${shares[@]}"; do
        for dir in /sys/fs/cgroup/kl-share-"$p" /sys/fs/cgroup/*/kl-share-"$p"; do
            [ ! -d "$dir" ] || rmdir "$dir" 2>/dev/null || true
        done
    done
    rm -rf "$work"
}
trap cleanup EXIT

bundle=$work/bundle
mkdir -p "$bundle"/rootfs/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$bundle/rootfs/bin/"
ln -s busybox "$bundle/rootfs/bin/sh"
ln -s busybox "$bundle/rootfs/bin/echo"
"$cli" spec --bundle "$bundle"
printf 'memory_mib = 128\nboot_timeout_secs = 3000\nrpc_timeout_secs = 1200\n' > "$work/config.toml"

printf '| CPU share | wall | CPU used |\n|---|---|---|\n'
for p in "${shares[@]}"; do
    name=kl-share-$p
    if [ -d /sys/fs/cgroup/cpu ]; then
        mkdir -p "/sys/fs/cgroup/cpu/$name"
        echo 100000 > "/sys/fs/cgroup/cpu/$name/cpu.cfs_period_us"
        echo $((p * 1000)) > "/sys/fs/cgroup/cpu/$name/cpu.cfs_quota_us"
    else
        mkdir -p "/sys/fs/cgroup/$name"
        echo "$((p * 1000)) 100000" > "/sys/fs/cgroup/$name/cpu.max"
    fi
    python3 - "$bundle/config.json" "/$name/vm" <<'EOF'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["process"]["args"] = ["sh", "-c", "echo hi"]
spec["process"]["terminal"] = False
spec["linux"]["cgroupsPath"] = sys.argv[2]
json.dump(spec, open(sys.argv[1], "w"))
EOF
    # The VMM and virtiofsd are children of `kata-like run`: their CPU
    # time is in bash's `time` once it exits.
    TIMEFORMAT='%R %S %U'
    { time "$cli" --root "$work/root" --config "$work/config.toml" \
        run --bundle "$bundle" "share-$p" </dev/null >"$work/out" 2>&1; } 2>"$work/time" ||
        die "run at $p%: $(cat "$work/out")"
    grep -qx hi "$work/out" || die "run at $p% printed: $(cat "$work/out")"
    awk -v p="$p" '{ printf "| %s%% of a core | %.0f s | %.0f s |\n", p, $1, $2 + $3 }' "$work/time"
done
