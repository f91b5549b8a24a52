#!/usr/bin/env bash
# valgrind memcheck over the CUDA emulator (docs/cuda-emulator.md): every dual-backend test
# body on the emulated CUDA backend, so that a kernel's out-of-bounds or uninitialised
# global-memory access shows as a valgrind error. The CPU-side stand-in for
# `compute-sanitizer --tool memcheck`, which needs a GPU (gpu-bin/run.sh sanitize runs that).
# Slow (valgrind is ~50x): about 25 minutes on two cores, most of it the sampler's body. Usage:
#   scripts/emu-memcheck.sh [TEST_FILTER]        default (::cuda_emu$): every body on the emulator, forward order
# Logs: target/emu-memcheck/*.log; exit status 1 if any body reports an error.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 2; }
filter="${1:-::cuda_emu$}"
bin=$(cargo test --release --features cuda --no-run --test backend_dual --message-format=json 2>/dev/null |
      python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "backend_dual":
        print(m["executable"])')
[[ -x "$bin" ]] || { echo "error: cannot build tests/backend_dual/" >&2; exit 2; }
mkdir -p target/emu-memcheck
tests=$("$bin" --list 2>/dev/null | sed -n 's/: test$//p' | grep -- "$filter")
fail=0
run() {
    local t=$1 log="target/emu-memcheck/${1//::/_}.log"
    if valgrind --tool=memcheck --error-exitcode=99 --track-origins=yes -q \
        "$bin" "$t" --exact --test-threads 1 >"$log" 2>&1; then
        echo "clean  $t"
    else
        echo "ERRORS $t (see $log)"
        return 1
    fi
}
# Two at a time (valgrind runs a process's threads one at a time), the next as soon as one ends.
running=0
for t in $tests; do
    run "$t" &
    running=$((running + 1))
    if (( running >= 2 )); then wait -n || fail=1; running=$((running - 1)); fi
done
while (( running > 0 )); do wait -n || fail=1; running=$((running - 1)); done
if (( fail )); then echo "memcheck: errors (logs in target/emu-memcheck/)"; exit 1; fi
echo "memcheck: no errors in $(echo "$tests" | wc -w) test(s)"
