#!/usr/bin/env bash
# Runs the whole test suite: installs and builds what is missing (cached),
# then unit tests, then the integration tests that boot real microVMs.
# On a machine with /dev/kvm (as root) VM tests must run: a skip fails.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "scripts/test.sh"
"$ROOT/scripts/install-deps.sh"
"$ROOT/scripts/build.sh"
cd "$ROOT"

export KATA_LIKE_VMM=$ARTIFACTS/kata-like-vmm
export KATA_LIKE_CLI=$TARGET_DIR/release/kata-like
export KATA_LIKE_KERNEL=$ARTIFACTS/vmlinux
export KATA_LIKE_INITRD=$ARTIFACTS/initrd.cpio
export KATA_LIKE_TEST_REPORT=$(mktemp)
if [ -w /dev/kvm ] && [ -r /dev/kvm ]; then
    export KATA_LIKE_REQUIRE_VM=1
fi

# Each suite's wall time, printed as it ends and again at the end.
timings=$(mktemp)
trap 'rm -f "$KATA_LIKE_TEST_REPORT" "$timings"' EXIT
suite_start=$SECONDS
suite() {
    local name=$1
    shift
    say "$name"
    local start=$SECONDS
    "$@"
    local took=$((SECONDS - start))
    printf '%4dm%02ds  %s\n' $((took / 60)) $((took % 60)) "$name" | tee -a "$timings" >&2
}

suite "unit and contract tests" \
    cargo test --workspace --release

suite "microVM integration tests (each boot takes tens of seconds on nested KVM)" \
    cargo test --release -p kata-like-tests --test vm_boot -- --ignored --test-threads=2

suite "VM snapshots: a cold-booted VM snapshotted mid-workload, restored 5 times at once" \
    cargo test --release -p kata-like-tests --test snapshot -- --ignored --test-threads=1

suite "pod networking: a microVM on a tap joined to a CNI-style veth by tc" \
    cargo test --release -p kata-like-tests --test pod_network -- --ignored --test-threads=1

suite "hostile agent requests against a real agent: refused, nothing changed" \
    cargo test --release -p kata-like-tests --test hostile_requests -- --ignored --test-threads=1

# Agent requests and replies of every small size and around every page,
# packet, credit and frame boundary, byte for byte, in a restored VM.
suite "control-path integrity: agent messages of every size arrive byte for byte" \
    cargo test --release -p kata-like-tests --test rpc_integrity -- --ignored --test-threads=1

suite "runc-compatible CLI: run, and create/start/state/kill/delete with hooks" \
    cargo test --release -p kata-like-tests --test standalone -- --ignored --test-threads=1

# One test at a time: each boots microVMs through a private containerd, and
# the concurrent-runs test already loads both cores.
suite "Docker and podman through the runc-compatible CLI (private dockerd, own podman storage)" \
    cargo test --release -p kata-like-tests --test docker_podman -- --ignored --test-threads=1 --nocapture

suite "containerd shim v2 through a private containerd and ctr" \
    cargo test --release -p kata-like-tests --test containerd -- --ignored --test-threads=1

# The other containerd versions (Debian 13's 1.7 and unstable's 2.x,
# fetched into the cache): the core ctr cases, a restart, a shim given up
# on, and the CRI smoke test. The full suites above run on the system's.
containerd_matrix() {
    local system versions version bindir tested=()
    system=$(dirname "$(command -v containerd)")
    versions=$("$ROOT/scripts/containerd-versions.sh")
    # fd 3: cargo would otherwise read the rest of the list from stdin.
    while read -r version bindir <&3; do
        tested+=("$version")
        [ "$bindir" = "$system" ] && continue
        say "containerd $version ($bindir)"
        KATA_LIKE_CONTAINERD_BIN=$bindir \
            cargo test --release -p kata-like-tests --test containerd -- --ignored --test-threads=1 \
            ctr_run_output_exit_code_env_cwd_user_and_stdin exec_pids_pause_resume_stats_and_signals \
            ctr_run_with_a_terminal_is_interactive_and_sized containerd_restart a_shim_containerd
        KATA_LIKE_CONTAINERD_BIN=$bindir \
            cargo test --release -p kata-like-tests --test cri -- --ignored --test-threads=1 pod_smoke
    done 3<<<"$versions"
    say "containerd versions tested: ${tested[*]}"
}
suite "containerd version matrix (1.6 above; 1.7 and 2.x here)" containerd_matrix

suite "VM templates: ctr run in a VM restored from a snapshot" \
    cargo test --release -p kata-like-tests --test vm_templates -- --ignored --test-threads=1

suite "Kubernetes pods through containerd's CRI plugin with CNI (one microVM per pod)" \
    cargo test --release -p kata-like-tests --test cri -- --ignored --test-threads=1

suite "Kubernetes behaviours side by side with runc (CRI, one pod per handler)" \
    cargo test --release -p kata-like-tests --test cri_conformance -- --ignored --test-threads=1

# CI runs the nginx (IPv4 + IPv6 default site), redis, python3 and iptables
# (NAT redirect) checks, about 3 minutes of guest work here (see
# docs/benchmarks.md); KATA_LIKE_WORKLOADS=all adds postgresql (initdb,
# about 6 more minutes).
export KATA_LIKE_WORKLOADS=${KATA_LIKE_WORKLOADS:-nginx,redis,python,iptables}
suite "real server images ($KATA_LIKE_WORKLOADS) under runc and kata-like" \
    cargo test --release -p kata-like-tests --test workloads -- --ignored --test-threads=1 --nocapture

# 50 SIGKILLs each of shim, VMM, virtiofsd and agent at random points, two
# container lives at a time, then a guest panic, a console flood and an OOM;
# nothing may be left behind (docs/security.md).
export KATA_LIKE_FAULT_ITERATIONS=${KATA_LIKE_FAULT_ITERATIONS:-50}
suite "fault injection: kills at random points, guest panic, console flood, OOM" \
    cargo test --release -p kata-like-tests --test faults -- --ignored --test-threads=1 --nocapture

if [ -s "$KATA_LIKE_TEST_REPORT" ]; then
    say "skipped tests:"
    cat "$KATA_LIKE_TEST_REPORT" >&2
fi
say "wall time per suite (total $(( (SECONDS - suite_start) / 60 ))m$(( (SECONDS - suite_start) % 60 ))s):"
cat "$timings" >&2
say "all tests passed"
