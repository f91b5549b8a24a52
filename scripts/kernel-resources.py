#!/usr/bin/env python3
"""What each kernel costs the SM it runs on, as ptxas reports it: registers per thread, spills,
local-memory stack, static shared memory, and the occupancy that follows on an H100. No GPU
needed: it compiles kernels/*.cu as build.rs does (the pinned nvcc in .cuda/, sm_90a unless
CUDA_COMPUTE_CAP says otherwise, -O3) with `-Xptxas -v` and reads what ptxas prints.

    python3 scripts/kernel-resources.py            # the table (markdown)
    python3 scripts/kernel-resources.py --check    # the table, then exit 1 if a kernel spills
                                                   # more than SPILL_BUDGET allows

Occupancy is the register- and shared-memory-limited share of an H100 SM's 64 warp slots
(65,536 registers in 4 sub-partitions, allocated 256 at a time per warp, 228 KiB of shared memory with 1 KiB
reserved per block, 2,048 threads, 32 blocks). It needs the block size, which this script
takes from the kernel's `__launch_bounds__` (every kernel whose occupancy matters has one:
the attention kernels and sampling); for the others it gives only the warps per SM that
their registers allow. Dynamic shared memory (attn_decode's, rope_store_kv's) depends on the
model's shapes and is not counted. A real GPU's figures, `cuFuncGetAttribute` and
`cuOccupancyMaxActiveBlocksPerMultiprocessor` under ncu, are the ones to trust; this is what
can be known before one.
"""
import concurrent.futures
import os
import re
import sys
import tempfile

from kernel_cubin import KDIR, cubin

# Spill bytes (stores, loads) a kernel may have; any other spill fails --check. The one entry:
# ptxas caps attn_prefix_hd64 at 128 registers (4 blocks of 128 threads per SM) and keeps one
# value in local memory, stored once and loaded once per 64-key tile (2 loads among 2,288
# instructions). `__launch_bounds__(128, 3)` removes the spill at 164 registers (3 blocks per
# SM); which is faster is for a GPU to measure, not this script.
SPILL_BUDGET = {"attn_prefix_hd64": (4, 8)}

# H100 (sm_90) per-SM limits, from the CUDA occupancy calculator's table.
REGS_PER_SM, REG_UNIT, SUB_PARTITIONS, MAX_WARPS, MAX_BLOCKS = 65536, 256, 4, 64, 32
SMEM_PER_SM, SMEM_UNIT, SMEM_RESERVED = 228 * 1024, 128, 1024


def parse(log):
    """[(kernel, {regs, smem, stack, spill_st, spill_ld})] in ptxas's order."""
    out, cur = [], None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = {"regs": 0, "smem": 0, "stack": 0, "spill_st": 0, "spill_ld": 0}
            out.append((m.group(1), cur))
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(s.group(1)) if s else 0
            cur = None  # ptxas's own device functions (sincos's slow path) follow
    return out


def defines(path, seen=None):
    """#define NAME <int> in a file and the headers it includes from kernels/."""
    seen = seen if seen is not None else set()
    if path in seen or not os.path.exists(path):
        return {}
    seen.add(path)
    text = open(path).read()
    d = {}
    for inc in re.findall(r'#include "([^"]+)"', text):
        d.update(defines(os.path.join(KDIR, inc), seen))
    d.update({k: int(v) for k, v in re.findall(r"#define (\w+) (\d+)\b", text)})
    return d


def launch_bounds(src):
    """{kernel: threads per block} from __launch_bounds__, through macros such as
    PREFILL_ENTRY(HD) that paste the head dimension into the name."""
    text = open(src).read()
    d = defines(src)
    out = {}
    # __launch_bounds__(threads) or (threads, min blocks per SM[, max blocks per cluster]).
    for m in re.finditer(r"__launch_bounds__\(\s*(\w+)\s*(?:,[^)]*)?\)\s+([\w#]+)", text):
        n = int(m.group(1)) if m.group(1).isdigit() else d.get(m.group(1))
        name = m.group(2)
        if n is None:
            continue
        if name.endswith("##HD"):
            base = name[: -len("##HD")]
            macro = text[: m.start()].rsplit("#define ", 1)[1].split("(", 1)[0]
            for hd in re.findall(rf"^{macro}\((\d+)\)", text, re.M):
                out[base + hd] = n
        else:
            out[name] = n
    return out


def occupancy(regs, smem, block):
    """(warps per SM by registers, blocks per SM, share of the 64 warp slots); the last two
    None without a block size."""
    # As cuda_occupancy.h's cudaOccMaxBlocksPerSMRegsLimit: registers are allocated per warp,
    # 256 at a time, inside each of the SM's 4 sub-partitions.
    per_warp = -(-max(regs, 1) * 32 // REG_UNIT) * REG_UNIT
    warps_by_regs = min(REGS_PER_SM // SUB_PARTITIONS // per_warp * SUB_PARTITIONS, MAX_WARPS)
    if block is None:
        return warps_by_regs, None, None
    wpb = -(-block // 32)
    blocks = min(warps_by_regs // wpb, MAX_WARPS // wpb, MAX_BLOCKS)
    if smem:
        blocks = min(blocks, SMEM_PER_SM // (-(-smem // SMEM_UNIT) * SMEM_UNIT + SMEM_RESERVED))
    return warps_by_regs, blocks, blocks * wpb / MAX_WARPS


def main():
    check = "--check" in sys.argv[1:]
    unknown = [a for a in sys.argv[1:] if a != "--check"]
    if unknown:
        sys.exit(f"error: unknown argument {unknown[0]} (usage: kernel-resources.py [--check])")
    srcs = sorted(os.path.join(KDIR, f) for f in os.listdir(KDIR) if f.endswith(".cu"))
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as ex:
        logs = list(ex.map(lambda s: cubin(s, os.path.join(tmp, os.path.basename(s) + ".cubin"),
                                           ["-Xptxas", "-v"]), srcs))
    print("| file | kernel | registers | spill st/ld (B) | stack (B) | static smem (B) | block | "
          "warps/SM by registers | blocks/SM | occupancy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    bad = []
    for src, log in zip(srcs, logs):
        bounds = launch_bounds(src)
        for name, k in parse(log):
            block = bounds.get(name)
            w, b, share = occupancy(k["regs"], k["smem"], block)
            occ = f"{100 * share:.1f}%" if share is not None else "—"
            print(f"| {os.path.basename(src)} | {name} | {k['regs']} | {k['spill_st']}/{k['spill_ld']} | "
                  f"{k['stack']} | {k['smem']} | {block or '—'} | {w} | {b if b is not None else '—'} | {occ} |")
            allowed = SPILL_BUDGET.get(name, (0, 0))
            if k["spill_st"] > allowed[0] or k["spill_ld"] > allowed[1]:
                bad.append(f"{name}: {k['spill_st']}/{k['spill_ld']} spill bytes (allowed {allowed[0]}/{allowed[1]})")
    if check and bad:
        sys.exit("error: kernels spill past their budget (scripts/kernel-resources.py SPILL_BUDGET): "
                 + "; ".join(bad))
    if check:
        print("kernel-resources: every spill within its budget", file=sys.stderr)


if __name__ == "__main__":
    main()
