#!/usr/bin/env bash
# ThreadSanitizer over the CUDA emulator (docs/cuda-emulator.md): the CPU-side stand-in for
# `compute-sanitizer --tool racecheck`, which needs a GPU (gpu-bin/run.sh sanitize runs that).
# The kernels are built instrumented (PONDER_EMU_TSAN=1), every CUDA thread runs as a TSan
# fiber, and only a __syncthreads, a __syncwarp or the launch's start and end order two
# threads, so any pair of conflicting accesses to shared or global memory that nothing orders
# is reported — read/write and write/write, across warps and across blocks — whichever order
# the emulator ran them in (the forward and reverse orders of the dual tests catch a missing
# barrier only when it changes a result).
#
# First a self-check: the emulator's own racy kernel (emu_test_racy_shift, a read of another
# thread's write with no barrier) must be reported, or the check itself is broken. Then every
# dual-backend body on the emulator (forward order), two at a time. Slow: the sampler's
# 1024-thread blocks take most of it. Usage:
#   scripts/emu-racecheck.sh [TEST_FILTER]        default (::cuda_emu$): every body
#   scripts/emu-racecheck.sh --methods            tests/cuda_emu.rs instead: the four methods
#                                                 and an eval with problems in flight (whole
#                                                 launches' sequences, several host threads)
# Builds into target/emu-racecheck (CARGO_TARGET_DIR overrides). Logs there; exit status 1 if
# any body reports a race, 2 if it cannot run (no libtsan).
set -euo pipefail
cd "$(dirname "$0")/.."
tsan_lib=$("${CXX:-c++}" -print-file-name=libtsan.so)
[[ -e "$tsan_lib" ]] || { echo "error: the C++ compiler has no libtsan (ThreadSanitizer's runtime)" >&2; exit 2; }
methods=0
if [[ "${1:-}" == --methods ]]; then methods=1; shift; fi
filter="${1:-::cuda_emu$}"
export PONDER_EMU_TSAN=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/emu-racecheck}"
# Rust's own code is not instrumented; what the interceptors (memcpy, malloc) see of it, and of
# the emulator's runtime, is not recorded either, so that only the kernels' accesses count.
export TSAN_OPTIONS="ignore_interceptors_accesses=1 report_thread_leaks=0 halt_on_error=0 exitcode=66 ${TSAN_OPTIONS:-}"
logs="$CARGO_TARGET_DIR/racecheck-logs"
mkdir -p "$logs"

. scripts/emu-tests.sh
export BUILD_LOG="$logs/build.err"
lib=$(test_binary --lib) || true
dual=$(test_binary --test backend_dual) || true
[[ -x "$lib" && -x "$dual" ]] || { cat "$logs/build.err" >&2; echo "error: cannot build the instrumented test binaries" >&2; exit 2; }

races() { grep -c "WARNING: ThreadSanitizer" "$1" || true; }

# The self-check: TSan must see the race the emulator's self-test plants.
self="$logs/self-check.log"
"$lib" backend::cuda::emu::tests::the_reverse_order_exposes_a_race_the_forward_order_hides \
    --exact --test-threads 1 >"$self" 2>&1 || true
if [[ $(races "$self") -eq 0 ]] || ! grep -q "selftest.cu" "$self"; then
    echo "error: ThreadSanitizer missed the planted race in emu_test_racy_shift (see $self)" >&2
    exit 1
fi
echo "self-check: the planted race is reported ($(races "$self") report(s), at selftest.cu)"

if ((methods)); then
    # Their runs of the ponder binary are instrumented too (the same target folder), and TSan
    # makes such a run exit 66 on a race, which fails its test: the count below says why.
    bin=$(test_binary --test cuda_emu) || true
    [[ -x "$bin" ]] || { cat "$logs/build.err" >&2; echo "error: cannot build the instrumented cuda_emu tests" >&2; exit 2; }
    filter=.
else
    bin=$dual
fi
tests=$("$bin" --list 2>/dev/null | sed -n 's/: test$//p' | grep -- "$filter") || true
[[ -n "$tests" ]] || { echo "error: no test matches $filter" >&2; exit 2; }
run() {
    local t=$1 log="$logs/${1//::/_}.log" rc=0
    "$bin" "$t" --exact --test-threads 1 >"$log" 2>&1 || rc=$?
    local n
    n=$(races "$log")
    if [[ $n -eq 0 && $rc -eq 0 ]]; then
        echo "clean  $t"
    elif [[ $n -eq 0 ]]; then
        echo "FAILED $t (exit $rc, no race; see $log)"
        return 1
    else
        echo "RACES  $t: $n report(s) (see $log)"
        return 1
    fi
}
fail=0
two_at_a_time run $tests || fail=1
if ((fail)); then echo "racecheck: races or failures (logs in $logs/)"; exit 1; fi
echo "racecheck: no races in $(echo "$tests" | wc -w) test(s)"
