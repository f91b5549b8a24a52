#!/usr/bin/env bash
# FLOP audit (flops.md): runs one prefill and a few decode steps under Nsight Compute and
# prints, per kernel family, the hardware's FLOP count beside the ledger's executed FLOPs and
# their ratio (flops.md asks for 1%). Run on the GPU machine from the gpu-bin/ bundle or a
# CUDA build:  bash scripts/flops-audit.sh [path/to/ponder]   (logs under $OUT/flops-audit)
#
# Which counter a family is held to (flops.md): the tensor pipe for the tensor-core kernels
# (cuBLAS, attn_prefill, attn_prefix: their ledger counts the matrix products only), the fp32
# add/mul/fma thread instructions for the others (their ledger models every fp32 instruction:
# src/backend/cuda/executed.rs). The f64 pipe (RoPE's sincos, the sampler's weights) is shown
# beside and held to nothing.
#
# The tensor counter's unit (one op = one FLOP or one multiply-add) is not documented for
# Hopper, so it is calibrated on this run: ponder's own flash kernels issue only
# mma.m16n8k16 (HMMA.16816, 2·16·8·16 = 4096 FLOPs per warp instruction), so their HMMA
# instruction count × 4096 over their tensor ops gives the FLOPs per op.
#
# STATUS: written without a GPU and never run yet. The metric names are those of Nsight
# Compute 2025.x for Hopper; metrics this ncu does not list are left out, with a warning.
set -euo pipefail
PONDER=${1:-./gpu-bin/ponder}
[[ -x "$PONDER" ]] || PONDER=./target/release/ponder
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
# Exit 77: nothing to audit with here (gpu-run.sh lists the step as skipped, not failed).
[[ -n "$NCU" ]] || { echo "error: ncu (Nsight Compute) not found" >&2; exit 77; }
logs="${OUT:+$OUT/flops-audit}"; logs="${logs:-flops-audit-logs}"
mkdir -p "$logs"
"$NCU" --query-metrics > "$logs/metrics.txt" 2>&1 || true
if grep -q "==ERROR==" "$logs/metrics.txt"; then
    echo "error: ncu cannot query this GPU's metrics: $(grep -m1 '==ERROR==' "$logs/metrics.txt")" >&2
    exit 1
fi
WANT=(smsp__sass_thread_inst_executed_op_fadd_pred_on.sum
      smsp__sass_thread_inst_executed_op_fmul_pred_on.sum
      smsp__sass_thread_inst_executed_op_ffma_pred_on.sum
      smsp__sass_thread_inst_executed_op_dadd_pred_on.sum
      smsp__sass_thread_inst_executed_op_dmul_pred_on.sum
      smsp__sass_thread_inst_executed_op_dfma_pred_on.sum
      sm__ops_path_tensor_src_bf16_dst_fp32.sum
      # The HMMA count at warp-scheduler and at SM level: whichever this ncu lists.
      smsp__inst_executed_pipe_tensor_op_hmma.sum
      sm__inst_executed_pipe_tensor_op_hmma.sum)
# (Each launch's grid and block sizes are in the raw page's own columns, kept in ncu.csv.)
metrics=()
for m in "${WANT[@]}"; do
    # An ncu that does not list a metric would refuse the whole run for it.
    if grep -qw "${m%.sum}" "$logs/metrics.txt"; then metrics+=("$m"); else
        echo "warning: this ncu does not list ${m%.sum}; its column is left out" >&2; fi
done
((${#metrics[@]} > 0)) || { echo "error: ncu lists none of the audit's metrics (see $logs/metrics.txt)" >&2; exit 1; }
list=$(IFS=,; echo "${metrics[*]}")
# A prefill of 64 tokens and 4 decode steps on synthetic:tiny; --flops prints the ledger by op.
# Twice: the fastest kernels first (their flash kernels calibrate the tensor counter's unit),
# then the batch-invariant ones that solve and eval run (64-row GEMMs, prefill rows as
# attn_decode items), whose table uses that unit.
bad=0
# Nothing of an earlier audit in this folder is read or kept.
rm -f "$logs/tensor-unit.txt"
: > "$logs/audit.txt"
for kind in fast invariant; do
    rc=0
    # ncu's own output goes to its log file (the generated text stays out of the CSV), counts
    # unscaled (--print-units base: no Kinst to misread).
    "$NCU" --clock-control none --csv --page raw --print-units base --log-file "$logs/ncu-$kind.csv" \
        --metrics "$list" \
        "$PONDER" generate --model synthetic:tiny --device cuda --kernels "$kind" \
        --prompt "$(printf 'x%.0s' {1..64})" --max-tokens 4 --temperature 0 --flops \
        > "$logs/generated-$kind.txt" 2> "$logs/ledger-$kind.txt" || rc=$?
    # Containers often withhold the performance counters from non-admin profiling.
    if grep -q ERR_NVGPUCTRPERM "$logs/ncu-$kind.csv" "$logs/ledger-$kind.txt"; then
        echo "error: ncu may not read this GPU's performance counters (ERR_NVGPUCTRPERM: profiling needs admin rights or NVreg_RestrictProfilingToAdminUsers=0); no audit possible here" >&2
        exit 1
    fi
    if ((rc != 0)); then
        echo "error: ncu exited with $rc (see $logs/ncu-$kind.csv and $logs/ledger-$kind.txt)" >&2
        tail -n 5 "$logs/ncu-$kind.csv" "$logs/ledger-$kind.txt" >&2
        exit 1
    fi
    echo "--- $kind kernels" | tee -a "$logs/audit.txt"
    python3 "$(dirname "$0")/flops-audit-report.py" "$logs/ncu-$kind.csv" "$logs/ledger-$kind.txt" \
        "$logs/tensor-unit.txt" | tee -a "$logs/audit.txt" || bad=$?
done
exit "$bad"
