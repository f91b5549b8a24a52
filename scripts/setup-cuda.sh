#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, cicc/NVVM, ptxas, CRT and runtime headers, CCCL)
# from PyPI wheels into the git-ignored .cuda/ of this checkout. No GPU and no system CUDA are
# needed: `cargo build --features cuda` then compiles every kernels/*.cu with it. Idempotent.
#
# Where the wheels put things (they merge into one tree under .cuda/py/nvidia/cu13):
#   bin/nvcc, bin/ptxas, bin/fatbinary, bin/nvcc.profile   (nvidia-cuda-nvcc)
#   nvvm/bin/cicc, nvvm/libdevice/                         (nvidia-nvvm)
#   include/crt/, include/cuda_runtime.h, include/cuda_bf16.h (nvidia-cuda-crt, -runtime)
#   include/cccl/                                           (nvidia-cuda-cccl)
#   include/nvtx3/ (NVTX ranges, header-only)               (nvidia-nvtx)
# nvcc.profile resolves cicc (../nvvm/bin), the includes and libdevice relative to nvcc itself,
# so the wheel's nvcc works in place: no wrapper, no environment variables.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-nvtx==13.0.85)
ROOT=.cuda/py
NVCC="$ROOT/nvidia/cu13/bin/nvcc"
STAMP=.cuda/installed.txt
want="${PKGS[*]}"
if [[ -x "$NVCC" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "CUDA compiler already installed in .cuda/"
else
    rm -rf "$ROOT"
    mkdir -p .cuda
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
        --target "$ROOT" "${PKGS[@]}"
    chmod +x "$ROOT"/nvidia/cu13/bin/* "$ROOT"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
    echo "$want" > "$STAMP"
fi
for f in "$NVCC" "$ROOT/nvidia/cu13/bin/ptxas" "$ROOT/nvidia/cu13/nvvm/bin/cicc" \
         "$ROOT/nvidia/cu13/include/cuda_runtime.h" "$ROOT/nvidia/cu13/include/crt/host_defines.h" \
         "$ROOT/nvidia/cu13/include/cccl/cuda/std/version" "$ROOT/nvidia/cu13/include/nvtx3/nvToolsExt.h"; do
    [[ -e "$f" ]] || { echo "error: $f is missing after the install" >&2; exit 1; }
done
# A smoke test: one kernel to a cubin for sm_90a.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/t.cu" <<'CU'
#include <cuda_bf16.h>
extern "C" __global__ void t(float* a, const __nv_bfloat16* b) { a[threadIdx.x] += __bfloat162float(b[threadIdx.x]); }
CU
"$NVCC" -cubin -arch=sm_90a -O3 -o "$tmp/t.cubin" "$tmp/t.cu"
echo "nvcc: $(cd "$(dirname "$NVCC")" && pwd)/nvcc"
"$NVCC" --version | tail -2
