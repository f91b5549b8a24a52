#!/usr/bin/env bash
# FLOP audit (flops.md): runs one prefill and one decode step under Nsight Compute and prints,
# per kernel family, the hardware's FLOP count beside the ledger's executed FLOPs and their
# ratio (it should be within 1%). Run on the GPU machine from the gpu-bin/ bundle or a CUDA
# build:  bash scripts/flops-audit.sh [path/to/ponder]   (logs under $OUT/flops-audit if set)
#
# STATUS: written without a GPU and never run yet. The metric names are those of Nsight
# Compute 2025.x for Hopper; the script lists what this ncu offers first and stops with a clear
# message if one is missing.
set -euo pipefail
PONDER=${1:-./gpu-bin/ponder}
[[ -x "$PONDER" ]] || PONDER=./target/release/ponder
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1 || true)
[[ -n "$NCU" ]] || { echo "error: ncu (Nsight Compute) not found" >&2; exit 1; }
logs="${OUT:+$OUT/flops-audit}"; logs="${logs:-flops-audit-logs}"
mkdir -p "$logs"
"$NCU" --query-metrics > "$logs/metrics.txt" 2>&1 || true
FP32="smsp__sass_thread_inst_executed_op_fadd_pred_on.sum,smsp__sass_thread_inst_executed_op_fmul_pred_on.sum,smsp__sass_thread_inst_executed_op_ffma_pred_on.sum"
TENSOR="sm__ops_path_tensor_src_bf16_dst_fp32.sum"
# Each launch's shape beside its counts (ncu.csv, kept in the logs), so that the plain kernels'
# executed-FLOP formulas (reductions, per-thread scalar work, libm expansions: docs/cuda.md)
# can be fitted to the hardware's counts after the first run.
LAUNCH="launch__grid_size,launch__block_size"
# (An ncu that does not list them would refuse the whole run for an unknown metric.)
grep -q launch__grid_size "$logs/metrics.txt" && grep -q launch__block_size "$logs/metrics.txt" ||
    { echo "note: this ncu lists no launch__grid_size / launch__block_size; shapes left out" >&2; LAUNCH=""; }
for m in ${FP32//,/ } $TENSOR; do
    base=${m%.sum}
    grep -q "$base" "$logs/metrics.txt" || echo "warning: $base is not listed by this ncu; its column will be empty" >&2
done
# A prefill of 64 tokens and 4 decode steps on synthetic:tiny; --flops prints the ledger by op.
rc=0
"$NCU" --clock-control none --csv --page raw --metrics "$FP32,$TENSOR${LAUNCH:+,$LAUNCH}" \
    "$PONDER" generate --model synthetic:tiny --device cuda --prompt "$(printf 'x%.0s' {1..64})" \
    --max-tokens 4 --temperature 0 --flops > "$logs/ncu.csv" 2> "$logs/ledger.txt" || rc=$?
# Containers often withhold the performance counters from non-admin profiling.
if grep -q ERR_NVGPUCTRPERM "$logs/ncu.csv" "$logs/ledger.txt"; then
    echo "error: ncu may not read this GPU's performance counters (ERR_NVGPUCTRPERM: profiling needs admin rights or NVreg_RestrictProfilingToAdminUsers=0); no audit possible here" >&2
    exit 1
fi
if ((rc != 0)); then
    echo "error: ncu exited with $rc (see $logs/ncu.csv and $logs/ledger.txt)" >&2
    tail -n 5 "$logs/ncu.csv" "$logs/ledger.txt" >&2
    exit 1
fi
python3 - "$logs/ncu.csv" "$logs/ledger.txt" <<'PY'
import csv, re, sys
from collections import defaultdict
FAMILY = [  # kernel name pattern -> ledger op(s)
    (r"gemm|xmma|cutlass|sm90_|ampere_", ["matmul"]),
    (r"add_rms_norm", ["add_rmsnorm"]), (r"rms_norm", ["rmsnorm"]),
    (r"rope_store_kv", ["rope_kv"]), (r"silu_mul", ["silu_mul"]),
    (r"attn|flash", ["attention"]), (r"embed", ["embedding"]),
    (r"talk_mix|bias_relu", ["talk_mix", "bias_relu"]), (r"sample|argmax", ["sample"]),
    (r"add_f32", ["add"]),
]
hw = defaultdict(float)
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, body = rows[0], rows[2:]  # row 1 holds units
col = {n: i for i, n in enumerate(head)}
for r in body:
    name = r[col["Kernel Name"]]
    fam = next((f for p, f in FAMILY if re.search(p, name)), None)
    key = "+".join(fam) if fam else "other:" + name[:40]
    val = lambda m: float(r[col[m]].replace(",", "")) if m in col and r[col[m]] not in ("", "n/a") else 0.0
    flops = (val("smsp__sass_thread_inst_executed_op_fadd_pred_on.sum")
             + val("smsp__sass_thread_inst_executed_op_fmul_pred_on.sum")
             + 2 * val("smsp__sass_thread_inst_executed_op_ffma_pred_on.sum")
             + 2 * val("sm__ops_path_tensor_src_bf16_dst_fp32.sum"))
    hw[key] += flops
led = defaultdict(int)
for line in open(sys.argv[2]):
    p = line.split()
    if len(p) >= 5 and p[0] in ("prefill", "decode", "thought", "mix", "prm", "sample") and p[1] != "(all)":
        led[p[1]] += int(p[4])  # executed FLOPs column
print(f"{'family':<28} {'hardware FLOPs':>16} {'ledger executed':>16} {'ratio':>8}")
for key in sorted(hw):
    ops = key.split("+")
    l = sum(led.get(o, 0) for o in ops)
    ratio = f"{hw[key] / l:.4f}" if l else "-"
    print(f"{key:<28} {hw[key]:>16.0f} {l:>16d} {ratio:>8}")
PY
