#!/usr/bin/env bash
# Builds the CUDA-enabled ponder and the GPU's test and bench binaries here (no GPU needed), and
# packs them into the git-ignored gpu-bin/ with run.sh (scripts/gpu-run.sh), to be carried to a
# GPU machine:
#     bash scripts/gpu-test.sh                 # here
#     device run, carry gpu-bin:  bash gpu-bin/run.sh     # there; results under $OUT
# run.sh does everything in one call inside a time budget, most important first (its header
# lists the steps). Only the binaries that touch the GPU travel: the dual-backend tests
# (tests/backend_dual/) and the criterion kernel benches; the other tests are the CPU
# backend's and run in CI.
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
bin=$(sed -n 's/.*Executable tests\/backend_dual\/main.rs (\(.*\))$/\1/p' "$log" | tail -1)
[[ -n "$bin" ]] || { echo "error: no backend_dual test binary in cargo's output" >&2; exit 1; }
strip_copy "$bin" gpu-bin/tests/backend_dual
rm -f "$log"
# The criterion kernel benches (benches/kernels.rs), run by run.sh's bench group.
cargo bench --features cuda --bench kernels --no-run 2>&1 | tee "$log"
bench=$(sed -n 's/.*Executable benches\/kernels.rs (\(.*\))$/\1/p' "$log" | tail -1)
[[ -n "$bench" ]] || { echo "error: no kernels bench binary in cargo's output" >&2; exit 1; }
strip_copy "$bench" gpu-bin/kernels-bench --strip-all
rm -f "$log"
cp scripts/gpu-run.sh gpu-bin/run.sh
chmod +x gpu-bin/run.sh
cp scripts/flops-audit.sh scripts/flops-audit-report.py scripts/profile.sh scripts/gpu-summary.py scripts/roofline.py scripts/find-cublas.py gpu-bin/
# Which code the bundle holds, so that a GPU result names the commit it measured.
{
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "built: $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
    echo "CUDA_COMPUTE_CAP: ${CUDA_COMPUTE_CAP:-90a (default)}"
} > gpu-bin/BUILD
du -sh gpu-bin
size=$(du -sm gpu-bin | cut -f1)
if (( size > 60 )); then
    echo "error: gpu-bin/ is ${size} MiB, over the 60 MiB budget" >&2
    exit 1
fi
ls -la gpu-bin gpu-bin/tests
