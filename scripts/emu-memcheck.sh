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
. scripts/emu-tests.sh
bin=$(test_binary --test backend_dual)
[[ -x "$bin" ]] || { echo "error: cannot build tests/backend_dual/" >&2; exit 2; }
mkdir -p target/emu-memcheck
tests=$("$bin" --list 2>/dev/null | sed -n 's/: test$//p' | grep -- "$filter")
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
fail=0
two_at_a_time run $tests || fail=1
if (( fail )); then echo "memcheck: errors (logs in target/emu-memcheck/)"; exit 1; fi
echo "memcheck: no errors in $(echo "$tests" | wc -w) test(s)"
