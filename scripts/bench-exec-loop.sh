#!/usr/bin/env bash
# Process start-up inside a kata-like container, guest kernels side by side:
# for each LABEL=VMLINUX, interleaved ROUNDS times, a container of the
# real-workload image (Debian's dynamically linked coreutils) runs 10 ×
# /bin/true and 5 × date from one shell, timed by the guest's
# /proc/uptime (no exec or stream set-up in the figure), and one
# `ctr task exec … true` is timed from the host. Prints per-process seconds
# and each kernel's ratio to the first. Uses the running containerd
# (scripts/setup.sh starts one) and the image scripts/build.sh makes.
# Usage: scripts/bench-exec-loop.sh [ROUNDS] LABEL=VMLINUX…
#   e.g. scripts/bench-exec-loop.sh 3 before=$OLD/vmlinux after=$HOME/.cache/kata-like/artifacts/vmlinux
source "$(dirname "$0")/lib.sh"
need_root "scripts/bench-exec-loop.sh"
rounds=3
if [[ ${1:-} =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
[ $# -ge 1 ] || die "usage: scripts/bench-exec-loop.sh [ROUNDS] LABEL=VMLINUX…"
image=docker.io/library/kata-like-workloads:bookworm
tar=$KATA_LIKE_CACHE/images/workloads.tar
[ -f "$tar" ] || die "no $tar: run scripts/build.sh"
ns=kl-bench-exec
ctr -n $ns image import "$tar" >/dev/null

work=$(mktemp -d /tmp/kl-bench-exec-XXXXXX)
cleanup() {
    cleanup_task
    rm -rf "$work"
}
trap cleanup EXIT

labels=()
for arg in "$@"; do
    label=${arg%%=*} kernel=${arg#*=}
    [ -f "$kernel" ] || die "$label: no kernel at $kernel"
    printf 'kernel = "%s"\n' "$kernel" > "$work/$label.toml"
    labels+=("$label")
done

# One round of one kernel: "<true s> <date s> <ctr exec s>" per process.
measure() {
    ctr -n $ns run -d --runtime io.containerd.kata-like.v2 --runtime-config-path "$work/$1.toml" \
        "$image" kl-bench-exec sleep 100000 >/dev/null || die "$1: ctr run failed"
    ctr -n $ns task exec --exec-id warm kl-bench-exec true
    ctr -n $ns task exec --exec-id loop kl-bench-exec sh -c '
        t0=$(cut -d" " -f1 /proc/uptime); for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done
        t1=$(cut -d" " -f1 /proc/uptime); for i in 1 2 3 4 5; do date >/dev/null; done
        t2=$(cut -d" " -f1 /proc/uptime); echo "$t0 $t1 $t2"' > "$work/loop"
    local s e
    s=$(date +%s.%N); ctr -n $ns task exec --exec-id one kl-bench-exec true; e=$(date +%s.%N)
    read -r t0 t1 t2 < "$work/loop"
    echo "$(echo "($t1 - $t0) / 10" | bc -l) $(echo "($t2 - $t1) / 5" | bc -l) $(echo "$e - $s" | bc -l)"
    cleanup_task
}
cleanup_task() {
    ctr -n $ns task kill -s KILL kl-bench-exec >/dev/null 2>&1 || true
    # grep reads all of ctr's output (no -q): under pipefail an early exit
    # could fail ctr with SIGPIPE and end the wait while the task is there.
    for _ in $(seq 100); do ctr -n $ns task ls -q | grep -x kl-bench-exec >/dev/null || break
        ctr -n $ns task rm kl-bench-exec >/dev/null 2>&1 || sleep 0.2; done
    ctr -n $ns container rm kl-bench-exec >/dev/null 2>&1 || true
}

# A first container per kernel builds its VM template outside the clock.
for label in "${labels[@]}"; do measure "$label" >/dev/null; done
for round in $(seq "$rounds"); do
    for label in "${labels[@]}"; do
        echo "$label $(measure "$label")" | tee -a "$work/all" | sed "s/^/round $round: /"
    done
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-10s %14s %14s %16s\n' kernel "/bin/true (s)" "date (s)" "ctr exec true (s)"
for label in "${labels[@]}"; do
    for col in 2 3 4; do
        grep "^$label " "$work/all" | awk -v c=$col '{print $c}' | median > "$work/$label.$col"
    done
    printf '%-10s %14.2f %14.2f %16.2f\n' "$label" "$(cat "$work/$label.2")" "$(cat "$work/$label.3")" "$(cat "$work/$label.4")"
done
first=${labels[0]}
for label in "${labels[@]:1}"; do
    printf '%s / %s: /bin/true %.2f, date %.2f, ctr exec %.2f\n' "$label" "$first" \
        "$(echo "$(cat "$work/$label.2") / $(cat "$work/$first.2")" | bc -l)" \
        "$(echo "$(cat "$work/$label.3") / $(cat "$work/$first.3")" | bc -l)" \
        "$(echo "$(cat "$work/$label.4") / $(cat "$work/$first.4")" | bc -l)"
done
