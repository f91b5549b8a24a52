// Elementwise helpers, all grid-stride loops over n elements (any grid, block 256):
//   add_f32:        a[i] += b[i]                       (f32, f32)
//   cast_f32_bf16:  y[i] = bf16(x[i])                  (round to nearest even)
//   cast_bf16_f32:  y[i] = f32(x[i])
//   fill_u32/u16:   p[i] = v                           (poisoning outputs in tests)
#include "common.cuh"

#define GRID_STRIDE(i, n) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (size_t)gridDim.x * blockDim.x)

extern "C" __global__ void add_f32(float* __restrict__ a, const float* __restrict__ b, size_t n) {
    GRID_STRIDE(i, n) a[i] += b[i];
}

extern "C" __global__ void cast_f32_bf16(const float* __restrict__ x, bf16* __restrict__ y,
                                         size_t n) {
    GRID_STRIDE(i, n) y[i] = f2bf(x[i]);
}

extern "C" __global__ void cast_bf16_f32(const bf16* __restrict__ x, float* __restrict__ y,
                                         size_t n) {
    GRID_STRIDE(i, n) y[i] = bf2f(x[i]);
}

extern "C" __global__ void fill_u32(uint32_t* p, uint32_t v, size_t n) { GRID_STRIDE(i, n) p[i] = v; }

extern "C" __global__ void fill_u16(uint16_t* p, uint16_t v, size_t n) { GRID_STRIDE(i, n) p[i] = v; }
