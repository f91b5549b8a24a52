"""Compiles one kernels/*.cu to a cubin outside cargo, the way build.rs compiles it (the pinned
nvcc in .cuda/, -O3 -lineinfo -std=c++17 --expt-relaxed-constexpr, the target CUDA_COMPUTE_CAP
names, sm_90a by default), for the scripts that read what nvcc made of a kernel:
kernel-resources.py (ptxas's report) and sass-fp32.py (the SASS). Imported, not run.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = os.path.join(ROOT, ".cuda/py/nvidia/cu13/bin/nvcc")
KDIR = os.path.join(ROOT, "kernels")


def compute_cap():
    """CUDA_COMPUTE_CAP as build.rs reads it: "90a", "sm_90a", "compute_90", "8.9"."""
    raw = os.environ.get("CUDA_COMPUTE_CAP", "90a").strip()
    return re.sub(r"^(sm_|compute_)", "", raw).replace(".", "")


def cubin(src, out, extra=()):
    """nvcc src → out; returns nvcc's stderr (ptxas's report with -Xptxas -v). Exits with
    nvcc's message if it fails, or if there is no nvcc in .cuda/."""
    if not os.access(NVCC, os.X_OK):
        sys.exit("error: no nvcc in .cuda/: run scripts/setup-cuda.sh first")
    r = subprocess.run([NVCC, "-cubin", f"-arch=sm_{compute_cap()}", "-O3", "-lineinfo", "-std=c++17",
                        "--expt-relaxed-constexpr", "-I" + KDIR, *extra, "-o", out, src],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: nvcc failed on {src}:\n{r.stderr}")
    return r.stderr
