// RMSNorm, plain and fused with the residual add (the trait's add_rms_norm):
//   rms_norm:      out = x / sqrt(mean(x^2) + eps) * w
//   add_rms_norm:  residual += x; out = rms_norm(residual) * w
// x f32 [n, d]; residual f32 [n, d] (updated in place); w bf16 [d]; out bf16 [n, d] (it only
// feeds GEMMs). One block (256 threads) per row; the sum of squares is reduced in a fixed
// order. Per element 4 FLOPs (5 with the add), one rsqrt-equivalent per row (useful); what the
// compiled kernel executes, reductions and per-thread scalar work included: norm_overhead in
// src/backend/cuda/ops.rs, read off its SASS.
#include "common.cuh"

__device__ __forceinline__ void norm_write(const float* __restrict__ r, const bf16* __restrict__ w,
                                           bf16* __restrict__ out, int d, float eps,
                                           float* scratch) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss = fmaf(r[i], r[i], ss);
    ss = block_sum(ss, scratch);
    const float inv = 1.0f / sqrtf(ss / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) out[i] = f2bf(r[i] * inv * bf2f(w[i]));
}

extern "C" __global__ void rms_norm(const float* __restrict__ x, const bf16* __restrict__ w,
                                    bf16* __restrict__ out, int d, float eps) {
    STATIC_SMEM(float, scratch, 32);
    const size_t row = blockIdx.x;
    norm_write(x + row * d, w, out + row * d, d, eps, scratch);
}

extern "C" __global__ void add_rms_norm(float* __restrict__ residual, const float* __restrict__ x,
                                        const bf16* __restrict__ w, bf16* __restrict__ out, int d,
                                        float eps) {
    STATIC_SMEM(float, scratch, 32);
    const size_t row = blockIdx.x;
    float* r = residual + row * d;
    const float* xr = x + row * d;
    // Each thread reads back only the elements it wrote itself: no barrier needed before
    // norm_write's first loop (same i-stride), and block_sum syncs before the second.
    for (int i = threadIdx.x; i < d; i += blockDim.x) r[i] += xr[i];
    norm_write(r, w, out + row * d, d, eps, scratch);
}
