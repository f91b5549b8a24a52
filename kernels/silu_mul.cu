// SwiGLU's gate: out[r, j] = silu(g) * u = g / (1 + exp(-g)) * u, with g = gate_up[r, j] and
// u = gate_up[r, f + j]: gate_up f32 [rows, 2f] is the fused gate|up GEMM output, out bf16
// [rows, f] (the input of the down projection).
// Grid-stride over rows*f, block 256. Per element: 3 FLOPs (add, divide, multiply) and 1 exp
// (useful); 22 executed with expf's and the division's expansions (SILU_MUL_EXECUTED, ops.rs).
#include "common.cuh"

extern "C" __global__ void silu_mul(const float* __restrict__ gate_up, bf16* __restrict__ out,
                                    size_t n, size_t f) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / f, j = i - r * f;
        const float g = gate_up[2 * f * r + j];
        out[i] = f2bf(g / (1.0f + expf(-g)) * gate_up[2 * f * r + f + j]);
    }
}
