// Quiet-STaR's mixing head around three cuBLAS GEMMs:
//   concat_bf16:  cat[r, :] = [h_base[r, :], h_end[r, :]] as bf16 [n, 2d]  (GEMM 1 input)
//     grid (n), block 256.
//   bias_relu:    out = bf16(max(x + b, 0)); x f32 [n, c], b bf16 [c]       (1 FLOP/element)
//     grid-stride over n*c, block 256.
//   talk_mix_out: out[r, i] = (1 - w[r]) * h_base[r, i] + w[r] * h_end[r, i]  (f32)
//     grid (n), block 256. Per row 1 FLOP, per element 3.
#include "common.cuh"

extern "C" __global__ void concat_bf16(const float* __restrict__ a, const float* __restrict__ b,
                                       bf16* __restrict__ out, int d) {
    const size_t r = blockIdx.x;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        out[r * 2 * d + i] = f2bf(a[r * d + i]);
        out[r * 2 * d + d + i] = f2bf(b[r * d + i]);
    }
}

extern "C" __global__ void bias_relu(const float* __restrict__ x, const bf16* __restrict__ b,
                                     bf16* __restrict__ out, int cols, size_t n) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        out[i] = f2bf(fmaxf(x[i] + bf2f(b[i % cols]), 0.0f));
    }
}

extern "C" __global__ void talk_mix_out(const float* __restrict__ base,
                                        const float* __restrict__ end, const float* __restrict__ w,
                                        float* __restrict__ out, int d) {
    const size_t r = blockIdx.x;
    const float wi = w[r];
    const float keep = 1.0f - wi;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        out[r * d + i] = keep * base[r * d + i] + wi * end[r * d + i];
}
