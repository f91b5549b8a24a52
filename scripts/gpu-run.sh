#!/usr/bin/env bash
# The GPU session's script, copied into the bundle as gpu-bin/run.sh by scripts/gpu-test.sh.
# On the GPU machine:   bash gpu-bin/run.sh [STEP...]
#
# A session has 15 minutes of device time, machine start included, so everything runs in one
# call, most important first, inside a budget (PONDER_GPU_BUDGET seconds, default 480): each
# step gets at most its own cap and what is left of the budget, and a step that cannot get
# its minimum is skipped and listed as such. Steps, in order:
#   info        nvidia-smi; the measured ceilings (roofline.py: read bandwidth, with the copy rate beside it; bf16 GEMM)
#   dual        the dual-backend tests, CUDA half (each kernel and the forward pass vs the CPU),
#               launches synchronous (CUDA_LAUNCH_BLOCKING=1) so that a fault names its own
#               launch; if any fails, each test again in a process of its own (a fault kills
#               the CUDA context of every later test in its process)
#   check       ponder check: Mistral-7B's whole forward pass (synthetic weights, bf16 on both)
#               on the GPU against the CPU backend in the same binary, 4 × 128-token prompts
#               and 8 greedy steps: logits within 5e-2, equal useful FLOPs
#   bench       bench decode (batch 1,16, context 512), prefill 2048, attention (Mistral-7B),
#               each with the batch-invariant and the fastest kernels
#   sanitize    compute-sanitizer memcheck and racecheck over the dual-backend CUDA tests
#   smoke       generate on synthetic:tiny; Quiet-STaR's parallel mode on synthetic:tiny
#               (Mistral-7B's loading is timed by bench)
#   audit       flops-audit.sh (ledger vs Nsight Compute) and profile.sh (nsys, else ncu)
#   eval        the four methods, --fixed-lengths, synthetic:mistral-7b, 2 problems in flight
#   kernels     the criterion kernel benches (CUDA instances)
# Output: $OUT/summary.md (everything, by gpu-summary.py), $OUT/summary.txt and
# $OUT/logs.tar.gz (every log), rewritten after every step and on exit, so that a call cut
# short still returns what finished; without $OUT, gpu-bin/logs/. The summary prints last.
# A step whose tests report "skipped: no CUDA GPU" fails: a run that tested nothing is no
# pass. A step whose tool is missing (exit 77) is listed as skipped.
#
# A rehearsal without a GPU checks every command line of it before device time is spent:
#   PONDER_GPU_DEVICE=cuda-emu PONDER_GPU_MODEL=synthetic:tiny bash gpu-bin/run.sh info smoke bench eval kernels
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${OUT:-$here/logs}"
logs="$(mktemp -d)/gpu-test"
mkdir -p "$logs" "$out"
export PONDER_CACHE="${PONDER_CACHE:-$here/cache}"
export RUST_BACKTRACE=1
budget=${PONDER_GPU_BUDGET:-480}
start=$SECONDS
# The benches before the sanitizers: under memcheck and racecheck the tests run many times
# slower, and their time is the least known; the benchmark table must not be what the budget
# leaves out. Steps skipped for the budget can be run by a second call: run.sh STEP...
steps=("$@"); [[ ${#steps[@]} -eq 0 ]] && steps=(info dual check bench sanitize smoke audit eval kernels)
ORIG_LD_LIBRARY_PATH="${LD_LIBRARY_PATH-}"
summary=()
fail=0
P="$here/ponder"
DEV=${PONDER_GPU_DEVICE:-cuda}
M=(--model "${PONDER_GPU_MODEL:-synthetic:mistral-7b}" --device "$DEV")

# run NAME CAP MIN command...: at most CAP seconds (and what is left of the budget).
run() {
    local name=$1 cap=$2 min=$3; shift 3
    local left=$((budget - (SECONDS - start)))
    (( cap > left )) && cap=$left
    if (( cap < min )); then
        summary+=("SKIP $name (budget: ${left}s left, needs ${min}s)"); return
    fi
    echo "=== $name (cap ${cap}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$cap" "$@" > "$logs/$name.log" 2>&1
    local rc=$?
    if (( rc == 0 )) && grep -q "skipped: no CUDA GPU" "$logs/$name.log"; then
        summary+=("FAIL $name (its tests skipped the GPU: none usable here)"); fail=1
        grep -m3 "skipped" "$logs/$name.log"
    elif (( rc == 0 )); then
        summary+=("PASS $name ($((SECONDS - t0)) s)"); tail -n 3 "$logs/$name.log"
    elif (( rc == 77 )); then
        summary+=("SKIP $name ($(tail -n 1 "$logs/$name.log" | head -c 200))")
    elif (( rc == 124 || rc == 137 )); then
        summary+=("TIME $name (stopped at its ${cap}s cap; partial log)"); fail=1
        tail -n 15 "$logs/$name.log"
    else
        summary+=("FAIL $name (exit $rc after $((SECONDS - t0)) s)"); fail=1
        tail -n 40 "$logs/$name.log"
    fi
    finish
}
# The summary and the log archive into $OUT: after every step, and once more on exit.
finish() {
    printf '%s\n' "${summary[@]}" > "$logs/summary.txt"
    python3 "$here/gpu-summary.py" "$logs" > "$logs/summary.md" 2> "$logs/gpu-summary.err" ||
        echo "gpu-summary.py failed (see gpu-summary.err in the logs)" >&2
    cp "$logs/summary.txt" "$logs/summary.md" "$out/" 2>/dev/null
    tar -czf "$out/logs.tar.gz" -C "$(dirname "$logs")" gpu-test 2>/dev/null
    return 0
}
trap finish EXIT
trap 'finish; exit 143' TERM
trap 'finish; exit 130' INT
# cudarc dlopens cuBLAS by name, trying the unversioned libcublas.so before libcublas.so.13 (an
# older toolkit's development link would win, and ponder would refuse its version). So
# find-cublas.py finds libcublas.so.13 (by the loader, in a toolkit outside ld.so.conf, or in
# PyTorch's pip wheels) and links libcublas.so / libcublasLt.so to it in a folder that goes
# first on LD_LIBRARY_PATH: no step fails for a library path alone.
if [[ "$DEV" == cuda ]]; then
    links="$(dirname "$logs")/cublas"
    if cublas_dir=$(python3 "$here/find-cublas.py" "$links" 2>"$logs/find-cublas.log"); then
        export LD_LIBRARY_PATH="$links:$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "cuBLAS: $cublas_dir (linked from $links, first on LD_LIBRARY_PATH)"
    else
        echo "cuBLAS: libcublas.so.13 not found ($(cat "$logs/find-cublas.log"))"
    fi
fi
# The binaries were built elsewhere: one that cannot start here (an older glibc or libstdc++
# than the build machine's) fails every step, so it is said once and nothing runs.
if ! "$P" --version > "$logs/version.log" 2>&1; then
    summary+=("FAIL ponder does not start here: $(head -c 300 "$logs/version.log" | tr '\n' ' ')")
    summary+=("     this machine: $(ldd --version 2>&1 | head -1)")
    cat "$logs/version.log"; steps=(); fail=1
fi
# --show-output prints each test's "skipped: no CUDA GPU", which `run` turns into a failure.
dual=("$here/tests/backend_dual" --skip cuda_emu --skip ::cpu --test-threads=1 --show-output)
# Each CUDA test of the dual binary in a process of its own (after a failure of the whole),
# 30 s at most each, its output kept in the logs (each-<test>.log).
each_dual() {
    local bin=$1 dir=$2 t rc=0
    for t in $("$bin" --list 2>/dev/null | sed -n 's/: test$//p' | grep '::cuda$'); do
        local log="$dir/each-${t//::/_}.log"
        if timeout 30 "$bin" --exact "$t" --test-threads=1 --show-output > "$log" 2>&1 &&
            ! grep -q "skipped: no CUDA GPU" "$log"; then
            echo "ok     $t"
        else echo "FAILED $t"; rc=1; fi
    done
    return $rc
}
export -f each_dual
san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)

for s in "${steps[@]}"; do case "$s" in
info)
    cp "$here/BUILD" "$logs/build.log" 2>/dev/null || echo "commit: unknown (no BUILD)" > "$logs/build.log"
    cat "$logs/build.log"
    { nvidia-smi || true; } > "$logs/nvidia-smi.log" 2>&1
    head -n 12 "$logs/nvidia-smi.log"
    # PyTorch with the library path it had: the cuBLAS links above are for ponder.
    run roofline 90 20 env LD_LIBRARY_PATH="$ORIG_LD_LIBRARY_PATH" python3 "$here/roofline.py"
    # ponder bench prints its rates against these too (beside hardware.md's H100 figures).
    bw=$(sed -n 's/^measured read bandwidth: \([0-9.]*\) TB\/s.*/\1/p' "$logs/roofline.log")
    tf=$(sed -n 's/^measured bf16 GEMM: \([0-9.]*\) TFLOP\/s.*/\1/p' "$logs/roofline.log")
    [[ -n "$bw" ]] && export PONDER_MEASURED_TBPS=$bw
    [[ -n "$tf" ]] && export PONDER_MEASURED_TFLOPS=$tf ;;
dual)
    run dual-tests 150 20 env CUDA_LAUNCH_BLOCKING=1 "${dual[@]}"
    if [[ "${summary[-1]}" != PASS* ]]; then
        run dual-each 120 20 env CUDA_LAUNCH_BLOCKING=1 bash -c 'each_dual "$1" "$2"' _ \
            "$here/tests/backend_dual" "$logs"
    fi ;;
check)
    run check-mistral 150 60 "$P" check "${M[@]}" --tokens 128 --steps 8 --batch 4 \
        --tol 0.05 ;;
smoke)
    run smoke-tiny 30 5 "$P" generate --model synthetic:tiny --device "$DEV" \
        --prompt "2+2=" --max-tokens 8 --temperature 0 --flops
    # Quiet-STaR's parallel mode: thought blocks through attn_prefill's diagonal mask.
    run smoke-parallel 40 5 "$P" solve --model synthetic:tiny --device "$DEV" \
        --method quiet-star --quiet-mode parallel --fixed-lengths --votes 1 --max-tokens 4 \
        --answer-tokens 1 --question "Tom has 3 apples and buys 4 more. How many now?" ;;
bench)
    # Each with both kinds of kernels: the batch-invariant ones that solve and eval run, and
    # the fastest per pass (the kernels' own table).
    run bench-decode 140 40 "$P" bench decode "${M[@]}" --batch 1,16 --context 512 --steps 32 \
        --kernels both
    run bench-prefill 120 40 "$P" bench prefill "${M[@]}" --tokens 2048 --kernels both
    run bench-attention 100 20 "$P" bench attention "${M[@]}" --kernels both ;;
eval)
    # The study's token budgets replayed (every vote, step and thought to its limit); the
    # cheap methods first, so that a cap still leaves their results (results.jsonl is
    # durable; the report is written from whatever finished).
    rm -rf "$logs/eval-mistral"
    run eval-mistral 120 60 "$P" eval "${M[@]}" --fixed-lengths \
        --method baseline,rebase,combined,quiet-star --limit 2 --in-flight 2 --votes 6 \
        --width 3 --kv-pages 1024 --out "$logs/eval-mistral"
    [[ -s "$logs/eval-mistral/results.jsonl" ]] &&
        run eval-report 30 5 "$P" report "$logs/eval-mistral" ;;
sanitize)
    if [[ -n "$san" ]]; then
        for tool in memcheck racecheck; do
            run "sanitizer-$tool" 120 30 "$san" --tool "$tool" --error-exitcode 1 "${dual[@]}"
        done
    else
        summary+=("SKIP compute-sanitizer (not found)")
    fi ;;
audit)
    # Their own outputs go into the log folder (so into logs.tar.gz), not beside summary.md.
    run flops-audit 120 40 env OUT="$logs" bash "$here/flops-audit.sh" "$P"
    run profile 60 30 env OUT="$logs" bash "$here/profile.sh" "$P" ;;
kernels)
    # (Rehearsed on the emulator, each bench runs once: criterion's --test.)
    # (The groups set their own measurement time, which beats criterion's flag: hence the
    # variable.)
    timing=(--warm-up-time 0.5 --noplot)
    [[ "$DEV" == cuda-emu ]] && timing=(--test)
    run bench-kernels 120 30 env CRITERION_HOME="$logs/criterion" PONDER_BENCH_BACKENDS="$DEV" \
        PONDER_BENCH_MEASURE_S=1 \
        "$here/kernels-bench" --bench "${timing[@]}" ;;
*) echo "unknown step: $s (info dual check bench sanitize smoke audit eval kernels)" >&2; exit 2 ;;
esac; done
summary+=("total $((SECONDS - start)) s of a ${budget} s budget")
finish
echo "--- summary (logs: $out/summary.md, $out/logs.tar.gz)"
cat "$logs/summary.txt"
exit $fail
