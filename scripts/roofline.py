#!/usr/bin/env python3
"""The two ceilings of the GPU this runs on, measured (METHOD.md: datasheet rates are leads):
device-memory read bandwidth from a reduction over 4 GiB (bytes read: decode reads its
weights and K/V and writes little, and hardware.md's 3.1 TB/s is a read-only stream; a
4 GiB device-to-device copy, read + written, is printed beside it) and the bf16 matrix rate from an 8192^3 cuBLAS GEMM on random data, each the median of 20 timed runs
after warm-up, timed with CUDA events. gpu-bin/run.sh prints ponder's benchmarks beside
these as well as beside hardware.md's H100 figures (3.1 TB/s, 790 TFLOP/s).

    python3 roofline.py        (needs PyTorch with CUDA; prints four lines)
"""
import statistics
import sys

try:
    import torch
except ImportError:
    print("roofline: PyTorch not available; no measured ceilings")
    sys.exit(0)
if not torch.cuda.is_available():
    print("roofline: no CUDA device visible to PyTorch")
    sys.exit(0)


def median_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


dev = torch.cuda.get_device_name(0)
n = (4 << 30) // 2
src = torch.randn(n, dtype=torch.bfloat16, device="cuda")
dst = torch.empty_like(src)
ms = median_ms(lambda: dst.copy_(src))
bw_copy = 2 * src.numel() * 2 / (ms * 1e-3) / 1e12
del dst
ms = median_ms(lambda: torch.sum(src, dtype=torch.float32))
bw = src.numel() * 2 / (ms * 1e-3) / 1e12
del src
m = 8192
a = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
b = torch.randn(m, m, dtype=torch.bfloat16, device="cuda")
ms_mm = median_ms(lambda: a @ b)
tf = 2 * m**3 / (ms_mm * 1e-3) / 1e12
print(f"device: {dev}")
print(f"measured read bandwidth: {bw:.3f} TB/s (sum over 4 GiB of bf16, bytes read, median of 20)")
print(f"measured copy bandwidth: {bw_copy:.3f} TB/s (4 GiB bf16 copy, read + write, median of 20)")
print(f"measured bf16 GEMM: {tf:.1f} TFLOP/s (8192^3, random data, median of 20)")
