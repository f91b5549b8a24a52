#!/usr/bin/env python3
"""The FLOP audit's table (flops-audit.sh): Nsight Compute's counters per kernel family beside
the ledger's executed FLOPs, and whether they agree to 1% (flops.md).

    flops-audit-report.py NCU_CSV LEDGER_TXT [UNIT_FILE]
                                                 the table; exit 3 if a family is off by > 1%;
                                                 the tensor unit calibrated on the flash
                                                 kernels goes to UNIT_FILE, and a run without
                                                 them (batch-invariant kernels) reads it there
    flops-audit-report.py --self-check           parses a made-up run (no GPU needed)

NCU_CSV is `ncu --csv --page raw` output (other lines are skipped), LEDGER_TXT the stderr of
`ponder generate --flops` (its table: phase, op, calls, useful, executed, ...).
"""
import csv
import os
import re
import sys
from collections import defaultdict

# kernel-name pattern -> (family, ledger (phase, op) keys, counter). A phase of None takes the
# op in every phase. The audit's run has one sequence, so with the fast kernels its
# prefill-phase attention is attn_prefill alone and its decode-phase attention attn_decode
# alone (no shared prefix); with the batch-invariant ones attn_decode does both (`report`).
FAMILIES = [
    # cuBLAS: tensor-core GEMMs, and for the audit's one-row products its CUDA-core GEMV and
    # split-K kernels, so the family is held to both counters together.
    (r"gemm|gemv|xmma|cutlass|sm90_|ampere_|nvjet|splitK|cublas", "matmul (cuBLAS)",
     [(None, "matmul")], "tensor+fp32"),
    (r"^attn_prefill|^attn_prefix", "attention (flash)", [("prefill", "attention")], "tensor"),
    (r"^attn_decode", "attention (decode)", [("decode", "attention")], "fp32"),
    (r"^attn_merge", "attn_merge", [(None, "attn_merge")], "fp32"),
    (r"^add_rms_norm", "add_rmsnorm", [(None, "add_rmsnorm")], "fp32"),
    (r"^rms_norm", "rmsnorm", [(None, "rmsnorm")], "fp32"),
    (r"^rope_store_kv", "rope_kv", [(None, "rope_kv")], "fp32"),
    (r"^silu_mul", "silu_mul", [(None, "silu_mul")], "fp32"),
    (r"^embed_gather", "embedding", [(None, "embedding")], "fp32"),
    (r"^gather_rows", "gather", [(None, "gather")], "fp32"),
    (r"^kv_copy", "kv_copy", [(None, "kv_copy")], "fp32"),
    (r"^add_f32", "add", [(None, "add")], "fp32"),
    (r"^talk_mix_out", "talk_mix", [(None, "talk_mix")], "fp32"),
    (r"^bias_relu", "bias_relu", [(None, "bias_relu")], "fp32"),
    (r"^concat_bf16", "concat", [(None, "concat")], "fp32"),
    (r"^cast_", "cast", [(None, "cast")], "fp32"),
    (r"^sample_rows", "sample", [(None, "sample")], "fp32"),
]
PHASES = ("prefill", "decode", "thought", "mix", "prm", "sample")
FADD, FMUL, FFMA = (f"smsp__sass_thread_inst_executed_op_f{o}_pred_on.sum" for o in ("add", "mul", "fma"))
DADD, DMUL, DFMA = (f"smsp__sass_thread_inst_executed_op_d{o}_pred_on.sum" for o in ("add", "mul", "fma"))
TENSOR = "sm__ops_path_tensor_src_bf16_dst_fp32.sum"
HMMA = "smsp__inst_executed_pipe_tensor_op_hmma.sum"
# The same count at SM level, the name GH100's metric list is known to hold (flops-audit.sh asks
# for both; the report reads whichever came back).
HMMA_SM = "sm__inst_executed_pipe_tensor_op_hmma.sum"
HMMA_FLOPS = 2 * 16 * 8 * 16  # one warp's mma.m16n8k16


def family_of(name):
    for pat, fam, keys, counter in FAMILIES:
        if re.search(pat, name):
            return fam, keys, counter
    return "other: " + name[:40], [], "fp32"


def read_ncu(path):
    rows = list(csv.reader(l for l in open(path) if l.startswith('"')))
    # The header is the row that names the columns (any other quoted line, e.g. a program's
    # output, is not); the row after it holds the units, then one row per launch.
    at = next((i for i, r in enumerate(rows) if r and r[0] == "ID" and "Kernel Name" in r), None)
    if at is None:
        raise SystemExit(f"error: {path} has no ncu header row (ID, Kernel Name, ...)")
    head, units, body = rows[at], rows[at + 1] if at + 1 < len(rows) else [], rows[at + 2:]
    if not body:
        raise SystemExit(f"error: {path} holds no ncu measurements")
    col = {n: i for i, n in enumerate(head)}
    # Counts must come unscaled (--print-units base): a "Kinst" read as "inst" is 1000x off.
    # Base units ("inst", and whatever the tensor counters print) never start with a scale.
    for name, i in col.items():
        u = units[i] if i < len(units) else ""
        if name.endswith(".sum") and u[:1] in ("K", "M", "G", "T"):
            raise SystemExit(f"error: {path}: {name} is in {u!r}, not instructions (run ncu with --print-units base)")

    def val(r, m):
        if m not in col or r[col[m]] in ("", "n/a"):
            return 0.0
        return float(r[col[m]].replace(",", ""))

    return [(r[col["Kernel Name"]], lambda m, r=r: val(r, m)) for r in body], col


def read_ledger(path):
    led = defaultdict(int)
    for line in open(path):
        p = line.split()
        if len(p) >= 5 and p[0] in PHASES and p[1] != "(all)":
            led[(p[0], p[1])] += int(p[4])  # executed FLOPs column
    if not led:
        raise SystemExit(f"error: {path} holds no FLOP ledger (ponder's --flops table)")
    return led


def report(ncu_csv, ledger_txt, out=sys.stdout, unit_file=None):
    """Prints the table; returns the number of failing families. The tensor unit calibrated
    here is written to unit_file when one is given; a run without flash kernels (the
    batch-invariant kernels) reads it from there instead."""
    launches, col = read_ncu(ncu_csv)
    led = read_ledger(ledger_txt)
    fams = {}
    for name, v in launches:
        fam, keys, counter = family_of(name)
        f = fams.setdefault(fam, {"keys": keys, "counter": counter, "n": 0, "fp32": 0.0,
                                  "f64": 0.0, "tensor": 0.0, "hmma": 0.0})
        f["n"] += 1
        f["fp32"] += v(FADD) + v(FMUL) + 2 * v(FFMA)
        f["f64"] += v(DADD) + v(DMUL) + 2 * v(DFMA)
        f["tensor"] += v(TENSOR)
        f["hmma"] += v(HMMA) if HMMA in col else v(HMMA_SM)
    # The tensor counter's unit, from ponder's flash kernels (HMMA.16816 only).
    flash = fams.get("attention (flash)")
    if flash and flash["tensor"] > 0 and (HMMA in col or HMMA_SM in col):
        per_op = flash["hmma"] * HMMA_FLOPS / flash["tensor"]
        unit = f"{per_op:.3f} FLOPs per tensor op (calibrated: the flash kernels' HMMA.16816 instructions x 4096)"
        if unit_file:
            with open(unit_file, "w") as fh:
                fh.write(f"{per_op!r}\n")
    elif unit_file and os.path.exists(unit_file):
        with open(unit_file) as fh:
            per_op = float(fh.read())
        unit = f"{per_op:.3f} FLOPs per tensor op (calibrated on the fast kernels' run)"
    else:
        per_op = 1.0
        unit = "1 FLOP per tensor op (assumed: no flash kernel or no HMMA counter in this run)"
    # Without a flash kernel (the batch-invariant kernels: prefill rows are attn_decode items)
    # every phase's attention is attn_decode's.
    if "attention (flash)" not in fams and "attention (decode)" in fams:
        fams["attention (decode)"]["keys"] = [(None, "attention")]
    print(f"tensor pipe: {unit}", file=out)
    print(f"{'family':<22} {'launches':>8} {'fp32 FLOPs':>14} {'tensor FLOPs':>14} {'f64 FLOPs':>12}"
          f" {'ledger executed':>16} {'ratio':>8}  verdict", file=out)
    bad = 0
    for fam in sorted(fams):
        f = fams[fam]
        tensor = f["tensor"] * per_op
        hw = {"tensor": tensor, "fp32": f["fp32"], "tensor+fp32": tensor + f["fp32"]}[f["counter"]]
        l = sum(n for (ph, op), n in led.items() for kp, ko in f["keys"] if ko == op and kp in (None, ph))
        if l == 0 and hw == 0:
            ratio, verdict = "-", "ok (none)"
        elif l == 0:
            ratio, verdict = "-", "FAIL (not in the ledger)"
        else:
            r = hw / l
            ratio = f"{r:.4f}"
            verdict = f"ok ({f['counter']})" if abs(r - 1) <= 0.01 else f"FAIL ({f['counter']})"
        bad += verdict.startswith("FAIL")
        print(f"{fam:<22} {f['n']:>8} {f['fp32']:>14.0f} {tensor:>14.0f} {f['f64']:>12.0f} {l:>16d}"
              f" {ratio:>8}  {verdict}", file=out)
    print(f"{len(fams) - bad} of {len(fams)} families within 1%", file=out)
    return bad


def self_check():
    """A made-up run: every family agrees except rmsnorm (2% over) and one unknown kernel."""
    import os
    import tempfile
    d = tempfile.mkdtemp()
    cols = ["ID", "Kernel Name", FADD, FMUL, FFMA, TENSOR, HMMA]
    rows = [
        # 2 layers of prefill attention: 8 HMMA x 4096 FLOPs = 32768 FLOPs over 16384 ops.
        ("attn_prefill_hd16", 0, 0, 0, 8192, 4),
        ("attn_prefill_hd16", 0, 0, 0, 8192, 4),
        ("sm90_xmma_gemm_bf16bf16_bf16f32", 0, 0, 0, 50000, 0),
        ("void gemv2T_kernel_val<int, int, __nv_bfloat16>", 0, 0, 500, 0, 0),  # 1000
        ("attn_decode", 100, 20, 1000, 0, 0),  # 2120
        ("rms_norm", 1000, 20, 10, 0, 0),  # 1040 against 1020
        ("mystery_kernel", 5, 0, 0, 0, 0),
    ]
    with open(os.path.join(d, "ncu.csv"), "w") as fh:
        fh.write("==PROF== Connected to process 1\n")
        fh.write('"hello" said the model\n')  # program output in the same file
        w = csv.writer(fh, quoting=csv.QUOTE_ALL)
        w.writerow(cols)
        w.writerow(["", "", "inst", "inst", "inst", "", "inst"])
        for i, r in enumerate(rows):
            w.writerow([i, r[0]] + [f"{x:,}" for x in r[1:]])
    with open(os.path.join(d, "ledger.txt"), "w") as fh:
        fh.write("phase    op                calls       useful FLOPs     executed FLOPs\n")
        fh.write("prefill  attention             2              100              32768  0 0\n")
        fh.write("prefill  matmul                2           101000             101000  0 0\n")
        fh.write("decode   attention             1              100               2120  0 0\n")
        fh.write("prefill  rmsnorm               1               10               1020  0 0\n")
        fh.write("prefill  (all)                 6           101000             136908  0 0\n")
    import io
    buf = io.StringIO()
    unit_file = os.path.join(d, "unit.txt")
    bad = report(os.path.join(d, "ncu.csv"), os.path.join(d, "ledger.txt"), buf, unit_file)
    text = buf.getvalue()
    # A run with no flash kernel (the batch-invariant kernels) takes the unit from the file.
    with open(os.path.join(d, "ncu2.csv"), "w") as fh:
        w = csv.writer(fh, quoting=csv.QUOTE_ALL)
        w.writerow(cols)
        w.writerow(["", "", "inst", "inst", "inst", "", "inst"])
        w.writerow([0, "sm90_xmma_gemm_bf16bf16_bf16f32", 0, 0, 0, "25,000", 0])
        w.writerow([1, "attn_decode", 100, 20, 1000, 0, 0])  # 2120
        w.writerow([2, "attn_decode", 0, 0, 40, 0, 0])  # 80
    with open(os.path.join(d, "ledger2.txt"), "w") as fh:
        fh.write("phase    op                calls       useful FLOPs     executed FLOPs\n")
        fh.write("prefill  matmul                1             1000              50000  0 0\n")
        fh.write("prefill  attention             1              100               2120  0 0\n")
        fh.write("decode   attention             1               10                 80  0 0\n")
    buf2 = io.StringIO()
    bad2 = report(os.path.join(d, "ncu2.csv"), os.path.join(d, "ledger2.txt"), buf2, unit_file)
    lines = {l.split("  ")[0].strip(): l for l in text.splitlines()}
    problems = []
    if "2.000 FLOPs per tensor op" not in text:
        problems.append("tensor unit not calibrated to 2.000")
    for fam, want in [("attention (flash)", "ok (tensor)"), ("matmul (cuBLAS)", "ok (tensor+fp32)"),
                      ("attention (decode)", "ok (fp32)"), ("rmsnorm", "FAIL (fp32)"),
                      ("other: mystery_kernel", "FAIL (not in the ledger)")]:
        line = next((l for k, l in lines.items() if k.startswith(fam)), "")
        if not line.rstrip().endswith(want):
            problems.append(f"{fam}: expected '{want}' in: {line!r}")
    if bad != 2 or "3 of 5 families within 1%" not in text:
        problems.append(f"expected 2 failing families of 5, got {bad}")
    text2 = buf2.getvalue()
    if bad2 != 0 or "2.000 FLOPs per tensor op (calibrated on the fast kernels' run)" not in text2:
        problems.append(f"the second run did not use the first run's unit: {text2!r}")
    if problems:
        sys.stdout.write(text)
        raise SystemExit("self-check failed:\n  " + "\n  ".join(problems))
    print("flops-audit-report self-check: ok")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-check"]:
        self_check()
    elif len(sys.argv) in (3, 4):
        unit_file = sys.argv[3] if len(sys.argv) == 4 else None
        sys.exit(3 if report(sys.argv[1], sys.argv[2], unit_file=unit_file) else 0)
    else:
        sys.exit(__doc__)
