#!/usr/bin/env python3
"""Where a kernel's fp32 arithmetic is, in the machine code nvcc emits: the basis of the
executed-FLOP models in src/backend/cuda/executed.rs, and how to recount them when a kernel or
the compiler changes. No GPU needed.

    python3 scripts/sass-fp32.py kernels/attn_decode.cu [--kernel attn_decode] [-v]

Compiles the file as build.rs does (the pinned nvcc in .cuda/, sm_90a unless CUDA_COMPUTE_CAP
says otherwise), disassembles it with cuobjdump (the nvidia-cuda-cuobjdump wheel, installed
into .cuda/sass/ on first use) and prints, for each kernel, its basic blocks with their
FADD / FMUL / FFMA (the counters flops-audit.sh reads: add + mul + 2·fma), MUFU, HMMA and f64
instructions and the blocks each one branches to. With -v it lists those instructions
themselves (with their predicates, which decide whether a thread counts them). Loop trip
counts are not derived: read them off the source.

    python3 scripts/sass-fp32.py kernels/attn_prefill.cu --kernel attn_prefill_hd128 --loops

prints instead, for every loop (a backward branch and the code from its target to it, where a
nested loop's body counts once), how many instructions of each kind one trip issues: what a loop spends its
issue slots on (shared-memory loads and mask arithmetic beside each HMMA, say).
"""
import collections
import os
import re
import subprocess
import sys
import tempfile

from kernel_cubin import NVCC, ROOT, cubin
SASS_DIR = os.path.join(ROOT, ".cuda/sass")
CUOBJDUMP = os.path.join(SASS_DIR, "nvidia/cu13/bin/cuobjdump")
WHEELS = ["nvidia-cuda-cuobjdump==13.2.51", "nvidia-cuda-nvdisasm==13.2.51"]
SHOWN = ("FADD", "FMUL", "FFMA", "MUFU", "HMMA", "DADD", "DMUL", "DFMA", "FCHK")


def tools():
    if not os.access(NVCC, os.X_OK):
        sys.exit("error: no nvcc in .cuda/: run scripts/setup-cuda.sh first")
    if not os.access(CUOBJDUMP, os.X_OK):
        print(f"installing {' '.join(WHEELS)} into .cuda/sass/", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore",
                        "--target", SASS_DIR, *WHEELS], check=True)
        for d in ("nvidia/cu13/bin",):
            for f in os.listdir(os.path.join(SASS_DIR, d)):
                os.chmod(os.path.join(SASS_DIR, d, f), 0o755)


def disassemble(src):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "k.cubin")
        cubin(src, out)
        return subprocess.run([CUOBJDUMP, "-sass", out], check=True, capture_output=True,
                              text=True).stdout


def kernels(sass):
    """{kernel: [(address, instruction text)]}"""
    out, cur = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(2)))
    return out


def opcode(text):
    toks = text.split()
    return toks[1] if toks[0].startswith("@") else toks[0]


def blocks(ins):
    targets = {int(m.group(1), 16) for _, t in ins for m in [re.search(r"\b(?:BRA|BSSY|CALL\.REL\S*)\b.*?(0x[0-9a-f]+)", t)] if m}
    leaders = {ins[0][0]} | targets
    for i, (_, t) in enumerate(ins[:-1]):
        if re.match(r"(BRA|EXIT|RET|CALL|BSYNC|WARPSYNC)", opcode(t)):
            leaders.add(ins[i + 1][0])
    out = []
    for a, t in ins:
        if a in leaders:
            out.append((a, []))
        out[-1][1].append(t)
    return out


def loops(ins, top=16):
    """One line per loop: its address range, instructions per trip, the most frequent kinds."""
    out = []
    for a, t in ins:
        m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", t)
        if m and int(m.group(1), 16) < a:
            lo = int(m.group(1), 16)
            c = collections.Counter(opcode(u) for b, u in ins if lo <= b <= a)
            kinds = ", ".join(f"{k} {v}" for k, v in c.most_common(top))
            out.append(f"  loop {lo:#07x}..{a:#07x}: {sum(c.values())} instructions per trip: {kinds}")
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    verbose = "-v" in sys.argv
    want_loops = "--loops" in sys.argv
    only = sys.argv[sys.argv.index("--kernel") + 1] if "--kernel" in sys.argv else None
    if only:
        args.remove(only)
    if len(args) != 1 or not args[0].endswith(".cu"):
        sys.exit(__doc__)
    tools()
    for name, ins in kernels(disassemble(args[0])).items():
        if only and name != only:
            continue
        total = collections.Counter(opcode(t).split(".")[0] for _, t in ins)
        print(f"== {name}: {len(ins)} instructions; static " +
              ", ".join(f"{k} {total[k]}" for k in SHOWN if total[k]))
        if want_loops:
            print("\n".join(loops(ins)))
            continue
        for a, ts in blocks(ins):
            c = collections.Counter()
            succ = []
            for t in ts:
                op = opcode(t)
                base = op.split(".")[0]
                if base in SHOWN:
                    c[op if base == "MUFU" else base] += 1
                m = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", t)
                if m:
                    succ.append(("?" if t.startswith("@") else "") + hex(int(m.group(1), 16)))
                if op == "EXIT":
                    succ.append(("?" if t.startswith("@") else "") + "exit")
            if not c and not verbose:
                continue
            print(f"  {a:#07x} {len(ts):4d} ins  " + " ".join(f"{k}:{v}" for k, v in c.items()) +
                  (f"  -> {' '.join(succ)}" if succ else ""))
            if verbose:
                for t in ts:
                    if opcode(t).split(".")[0] in SHOWN or "BRA" in t:
                        print("           " + t)


if __name__ == "__main__":
    main()
