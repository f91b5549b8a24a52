#!/usr/bin/env bash
# Profiles a short CUDA run of ponder: Nsight Systems (timeline) where nsys works, else Nsight
# Compute (per-kernel details for the first launches), and says which it used. Kernels sit
# inside NVTX ranges named after the phase they serve (prefill, decode, thought, mix, prm,
# sample; src/backend/cuda/nvtx.rs).
#     bash scripts/profile.sh [path/to/ponder] [ponder args…]
# Default run: 8 decode steps of 16 branches over a 512-token prefix, Mistral-7B shape.
# Output under $OUT/profile if set, else ./profile-out. ncu leaves the clocks alone
# (--clock-control none, METHOD.md). STATUS: never run yet (no GPU lent).
set -euo pipefail
PONDER=${1:-./gpu-bin/ponder}
[[ -x "$PONDER" ]] || PONDER=./target/release/ponder
shift || true
args=("$@")
if [[ ${#args[@]} -eq 0 ]]; then
    args=(bench decode --model synthetic:mistral-7b --device cuda --batch 16 --context 512 --steps 8)
fi
out="${OUT:+$OUT/profile}"; out="${out:-profile-out}"
mkdir -p "$out"
NSYS=$(command -v nsys || ls /usr/local/cuda*/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys 2>/dev/null | head -1 || true)
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
if [[ -n "$NSYS" ]] && timeout 45 "$NSYS" profile --trace=cuda,cublas,nvtx --force-overwrite=true -o "$out/ponder" \
        "$PONDER" "${args[@]}" > "$out/run.log" 2>&1; then
    echo "profiler: nsys ($NSYS)"
    # (Whole reports into files, then their heads: a `tee | head` pipe would die of SIGPIPE.)
    "$NSYS" stats --report cuda_gpu_kern_sum "$out/ponder.nsys-rep" > "$out/kernels.txt"
    head -40 "$out/kernels.txt"
    # The phase ranges (prefill, decode, thought, mix, prm, sample) the CUDA backend opens.
    "$NSYS" stats --report nvtx_sum "$out/ponder.nsys-rep" > "$out/nvtx.txt"
    head -20 "$out/nvtx.txt"
elif [[ -n "$NCU" ]]; then
    echo "profiler: ncu ($NCU) — nsys ${NSYS:+failed (see $out/run.log)}${NSYS:-not found}"
    # The kernels of the decode steps (the NVTX push range "decode"), not the first launches,
    # which are the prefill's; 40 launches are one decode step's first layers and more.
    # ncu writes to its own log file as it goes, apart from the program's output.
    "$NCU" --clock-control none --nvtx --nvtx-include "decode/" --launch-count 40 --set basic \
        --csv --page details --log-file "$out/ncu.csv" \
        "$PONDER" "${args[@]}" > "$out/run.log" 2>&1
    echo "per-kernel details: $out/ncu.csv"
else
    echo "error: neither nsys nor ncu found" >&2
    exit 77
fi
