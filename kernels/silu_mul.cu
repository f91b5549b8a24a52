// SwiGLU's gate: out[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up.
// gate, up f32 (the GEMM outputs); out bf16 (the input of the down projection).
// Grid-stride over n, block 256. Per element: 3 FLOPs (add, divide, multiply) and 1 exp.
#include "common.cuh"

extern "C" __global__ void silu_mul(const float* __restrict__ gate, const float* __restrict__ up,
                                    bf16* __restrict__ out, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = f2bf(g / (1.0f + expf(-g)) * up[i]);
    }
}
