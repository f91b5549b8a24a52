// Embedding gather and row gather.
//   embed_gather: out[r, :] = f32(table[ids[r], :]); table bf16 [vocab, d], out f32 [n, d].
//     grid (n), block 256. Ids are checked against the vocabulary on the host.
//   gather_rows_{b32,b16}: out[r, :] = x[rows[r], :] for 4- or 2-byte elements.
//     grid (n), block 256.
#include "common.cuh"

extern "C" __global__ void embed_gather(const bf16* __restrict__ table,
                                        const uint32_t* __restrict__ ids,
                                        float* __restrict__ out, int d) {
    const size_t r = blockIdx.x;
    const bf16* src = table + (size_t)ids[r] * d;
    float* dst = out + r * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = bf2f(src[i]);
}

extern "C" __global__ void gather_rows_b32(const uint32_t* __restrict__ x,
                                           const uint32_t* __restrict__ rows,
                                           uint32_t* __restrict__ out, int cols) {
    const size_t r = blockIdx.x;
    const uint32_t* src = x + (size_t)rows[r] * cols;
    uint32_t* dst = out + r * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void gather_rows_b16(const uint16_t* __restrict__ x,
                                           const uint32_t* __restrict__ rows,
                                           uint16_t* __restrict__ out, int cols) {
    const size_t r = blockIdx.x;
    const uint16_t* src = x + (size_t)rows[r] * cols;
    uint16_t* dst = out + r * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) dst[i] = src[i];
}
