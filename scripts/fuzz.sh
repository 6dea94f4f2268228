#!/usr/bin/env bash
# Runs every fuzz target (fuzz/, cargo-fuzz + libFuzzer, AddressSanitizer)
# for a fixed budget and prints, per target, the executions, the corpus
# size and whether it found anything (a crash, leak or timeout leaves an
# input in fuzz/artifacts/<target>/, which this script then names).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60, all)
#
# cargo-fuzz is installed from crates.io once per version into
# $KATA_LIKE_CACHE/cargo-fuzz. It passes -Z flags to rustc; RUSTC_BOOTSTRAP
# lets the stable toolchain accept them (no nightly needed). The corpus in
# fuzz/corpus/<target> persists between runs (not in git).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

budget=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(vsock_guest vsock_packet net_guest balloon_guest fs_vhost_user hybrid_vsock_connect agent_rpc vmm_api)

CARGO_FUZZ_VERSION=0.13.2
fuzz_root=$KATA_LIKE_CACHE/cargo-fuzz/$CARGO_FUZZ_VERSION
if [ ! -x "$fuzz_root/bin/cargo-fuzz" ]; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION (once)"
    cargo install --quiet --locked --version "=$CARGO_FUZZ_VERSION" --root "$fuzz_root" cargo-fuzz
fi
export PATH=$fuzz_root/bin:$PATH
export RUSTC_BOOTSTRAP=1

summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
failed=0
for target in "${targets[@]}"; do
    say "fuzzing $target for ${budget}s"
    log=$(mktemp)
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    before=$(ls "fuzz/artifacts/$target" | wc -l)
    # -rss_limit_mb: each run builds a small VM's devices; 2 GiB is ample.
    set +e
    cargo fuzz run --fuzz-dir fuzz "$target" -- -max_total_time="$budget" -print_final_stats=1 \
        -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1
    rc=$?
    set -e
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    corpus=$(ls "fuzz/corpus/$target" | wc -l)
    after=$(ls "fuzz/artifacts/$target" | wc -l)
    if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
        failed=1
        verdict="FINDING (exit $rc): $(ls -t "fuzz/artifacts/$target" | head -1)"
        tail -40 "$log" >&2
    else
        verdict="no findings"
    fi
    printf '%-22s %6ss %12s execs %7s corpus entries  %s\n' "$target" "$budget" "${execs:-?}" "$corpus" "$verdict" >>"$summary"
    rm -f "$log"
done
say "fuzz summary (rustc $(rustc --version | cut -d' ' -f2), cargo-fuzz $CARGO_FUZZ_VERSION)"
cat "$summary"
exit $failed
