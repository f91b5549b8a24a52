#!/usr/bin/env bash
# Builds the CUDA-enabled ponder and every test binary here (no GPU needed), and packs them into
# the git-ignored gpu-bin/ with a gpu-bin/run.sh to run on a GPU machine:
#     bash scripts/gpu-test.sh            # here
#     (copy gpu-bin/ over) bash gpu-bin/run.sh   # there; logs go to $OUT/gpu-test if set
# run.sh runs every test binary, the benchmarks, a fixed-length evaluation of the four methods
# on synthetic:mistral-7b, the FLOP audit and profile, then compute-sanitizer memcheck and
# racecheck over the dual-backend tests (tests/backend_dual.rs), in groups that can be run one
# call at a time (see its header); it prints a summary and exits non-zero when anything
# failed. Tests that read the real default model need the network or a filled $PONDER_CACHE;
# on an offline GPU machine without one they are listed as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${NVCC:-}" && -z "${CUDA_HOME:-}" ]] && ! command -v nvcc >/dev/null; then
    bash scripts/setup-cuda.sh
fi
cargo build --release --features cuda
log=$(mktemp)
cargo test --release --features cuda --no-run 2>&1 | tee "$log"
rm -rf gpu-bin
mkdir -p gpu-bin/tests
# Debug info stripped everywhere; symbols kept (readable backtraces) where the budget allows.
strip_copy() { objcopy "${3:---strip-debug}" "$1" "$2" 2>/dev/null || cp "$1" "$2"; chmod +x "$2"; }
strip_copy target/release/ponder gpu-bin/ponder
# Lines like "Executable tests/forward.rs (target/release/deps/forward-0123abcd)" and
# "Executable unittests src/lib.rs (target/release/deps/ponder-0123abcd)".
sed -n 's/.*Executable \(.*\) (\(.*\))$/\1|\2/p' "$log" | while IFS='|' read -r src bin; do
    case "$src" in
        unittests*) name="unit-$(basename "${src#unittests }" .rs)" ;;
        *) name=$(basename "$src" .rs) ;;
    esac
    # These read the real default model (fetched with pip): a GPU machine without network
    # cannot run them, and leaving them out keeps the bundle under its size budget.
    if [[ "$name" =~ ^(gguf_import|loading|real_model)$ ]]; then
        continue
    fi
    if [[ "$name" == backend_dual ]]; then
        strip_copy "$bin" "gpu-bin/tests/$name"
    else
        strip_copy "$bin" "gpu-bin/tests/$name" --strip-all
    fi
done
rm -f "$log"
# The criterion kernel benches (benches/kernels.rs), run by run.sh's bench group.
cargo bench --features cuda --bench kernels --no-run 2>&1 | tee "$log"
bench=$(sed -n 's/.*Executable benches\/kernels.rs (\(.*\))$/\1/p' "$log" | tail -1)
[[ -n "$bench" ]] || { echo "error: no kernels bench binary in cargo's output" >&2; exit 1; }
strip_copy "$bench" gpu-bin/kernels-bench --strip-all
rm -f "$log"
cat > gpu-bin/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine, from anywhere:  bash gpu-bin/run.sh [GROUP...]
# Groups (default: all, in this order; each fits one 10-minute device call):
#   tests     every bundled test binary (the dual-backend tests compare CUDA with the CPU)
#   bench     bench decode / prefill / attention on Mistral-7B-shaped synthetic weights, and
#             the criterion kernel benches (kernels-bench)
#   eval      the four methods end to end: eval --fixed-lengths on synthetic:mistral-7b
#   audit     flops-audit.sh (ledger vs Nsight Compute) and profile.sh (nsys or ncu)
#   sanitize  compute-sanitizer memcheck and racecheck over the dual-backend tests
# Logs: $OUT/gpu-test/ (else gpu-bin/logs/); a summary at the end, and summary.md (every
# log as one markdown page, by gpu-summary.py); non-zero exit on a failure.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
logs="${OUT:+$OUT/gpu-test}"; logs="${logs:-$here/logs}"
mkdir -p "$logs"
export PONDER_CACHE="${PONDER_CACHE:-$here/cache}"
export RUST_BACKTRACE=1
groups=("$@"); [[ ${#groups[@]} -eq 0 ]] && groups=(tests bench eval audit sanitize)
declare -a summary
fail=0
run() {  # name, command...
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    if "$@" > "$logs/$name.log" 2>&1; then
        summary+=("PASS $name ($((SECONDS - t0)) s)"); tail -n 3 "$logs/$name.log"
    else
        summary+=("FAIL $name ($((SECONDS - t0)) s, see $logs/$name.log)"); fail=1
        tail -n 40 "$logs/$name.log"
    fi
}
{ nvidia-smi || true; } > "$logs/nvidia-smi.log" 2>&1
for g in "${groups[@]}"; do case "$g" in
tests)
    for t in "$here"/tests/*; do
        run "test-$(basename "$t")" "$t" --test-threads=1
    done
    summary+=("SKIP tests gguf_import, loading, real_model (they need the real default model: not bundled)")
    run smoke-generate "$here/ponder" generate --model synthetic:tiny --device cuda \
        --prompt "2+2=" --max-tokens 8 --temperature 0 --flops ;;
bench)
    run bench-decode "$here/ponder" bench decode --model synthetic:mistral-7b --device cuda \
        --batch 1,16 --context 512 --steps 32
    run bench-prefill "$here/ponder" bench prefill --model synthetic:mistral-7b --device cuda --tokens 2048
    run bench-attention "$here/ponder" bench attention --model synthetic:mistral-7b --device cuda
    # criterion, every kernel alone on Mistral-7B shapes (the CUDA groups only).
    run bench-kernels env CRITERION_HOME="$logs/criterion" PONDER_BENCH_BACKENDS=cuda \
        "$here/kernels-bench" --bench ;;
eval)
    # The study's token budgets replayed (every vote, step and thought to its limit), two
    # problems in flight so the batcher's shared passes run on the GPU too.
    rm -rf "$logs/eval-mistral"
    run eval-mistral timeout 540 "$here/ponder" eval --model synthetic:mistral-7b --device cuda \
        --fixed-lengths --method all --limit 2 --in-flight 2 --votes 6 --width 6 \
        --kv-pages 1024 --out "$logs/eval-mistral" ;;
audit)
    run flops-audit bash "$here/flops-audit.sh" "$here/ponder"
    run profile bash "$here/profile.sh" "$here/ponder" ;;
sanitize)
    san=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
    if [[ -n "$san" ]]; then
        for tool in memcheck racecheck; do
            run "sanitizer-$tool" "$san" --tool "$tool" --error-exitcode 1 \
                "$here/tests/backend_dual" --test-threads=1
        done
    else
        summary+=("SKIP compute-sanitizer (not found)")
    fi ;;
*) echo "unknown group: $g (tests, bench, eval, audit, sanitize)" >&2; exit 2 ;;
esac; done
printf '%s\n' "${summary[@]}" | tee "$logs/summary.txt"
# Every log of this folder as one markdown page, for docs/BENCHMARKS.md.
if command -v python3 >/dev/null; then
    python3 "$here/gpu-summary.py" "$logs" > "$logs/summary.md" || echo "gpu-summary.py failed" >&2
fi
exit $fail
RUN
chmod +x gpu-bin/run.sh
cp scripts/flops-audit.sh scripts/profile.sh scripts/gpu-summary.py gpu-bin/
du -sh gpu-bin
size=$(du -sm gpu-bin | cut -f1)
if (( size > 60 )); then
    echo "error: gpu-bin/ is ${size} MiB, over the 60 MiB budget" >&2
    exit 1
fi
ls -la gpu-bin gpu-bin/tests
