#!/usr/bin/env bash
# Runs the whole test suite: installs and builds what is missing (cached),
# then unit tests, then the integration tests that boot real microVMs.
# On a machine with /dev/kvm (as root) VM tests must run: a skip fails.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root "scripts/test.sh"
"$ROOT/scripts/install-deps.sh"
"$ROOT/scripts/build.sh"
cd "$ROOT"

export KATA_LIKE_VMM=$TARGET_DIR/release/kata-like-vmm
export KATA_LIKE_CLI=$TARGET_DIR/release/kata-like
export KATA_LIKE_KERNEL=$ARTIFACTS/vmlinux
export KATA_LIKE_INITRD=$ARTIFACTS/initrd.cpio
export KATA_LIKE_TEST_REPORT=$(mktemp)
trap 'rm -f "$KATA_LIKE_TEST_REPORT"' EXIT
if [ -w /dev/kvm ] && [ -r /dev/kvm ]; then
    export KATA_LIKE_REQUIRE_VM=1
fi

say "unit and contract tests"
cargo test --workspace --release

say "microVM integration tests (each boot takes tens of seconds on nested KVM)"
cargo test --release -p kata-like-tests --test vm_boot -- --ignored --test-threads=2

say "VM snapshots: a cold-booted VM snapshotted mid-workload, restored 5 times at once"
cargo test --release -p kata-like-tests --test snapshot -- --ignored --test-threads=1

say "pod networking: a microVM on a tap joined to a CNI-style veth by tc"
cargo test --release -p kata-like-tests --test pod_network -- --ignored --test-threads=1

say "hostile agent requests against a real agent: refused, nothing changed"
cargo test --release -p kata-like-tests --test hostile_requests -- --ignored --test-threads=1

say "standalone containers: kata-like run/state/kill/delete"
cargo test --release -p kata-like-tests --test standalone -- --ignored --test-threads=1

# One test at a time: each boots microVMs through a private containerd, and
# the concurrent-runs test already loads both cores.
say "containerd shim v2 through a private containerd and ctr"
cargo test --release -p kata-like-tests --test containerd -- --ignored --test-threads=1

say "VM templates: ctr run in a VM restored from a snapshot"
cargo test --release -p kata-like-tests --test vm_templates -- --ignored --test-threads=1

say "Kubernetes pods through containerd's CRI plugin with CNI (one microVM per pod)"
cargo test --release -p kata-like-tests --test cri -- --ignored --test-threads=1

# 50 SIGKILLs each of shim, VMM, virtiofsd and agent at random points, two
# container lives at a time, then a guest panic, a console flood and an OOM;
# nothing may be left behind (docs/security.md).
say "fault injection: kills at random points, guest panic, console flood, OOM"
KATA_LIKE_FAULT_ITERATIONS=${KATA_LIKE_FAULT_ITERATIONS:-50} \
    cargo test --release -p kata-like-tests --test faults -- --ignored --test-threads=1 --nocapture

if [ -s "$KATA_LIKE_TEST_REPORT" ]; then
    say "skipped tests:"
    cat "$KATA_LIKE_TEST_REPORT" >&2
fi
say "all tests passed"
