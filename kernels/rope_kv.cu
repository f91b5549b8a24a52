// RoPE (HF rotate-half: element i pairs with i + d/2, angle pos * theta^(-2i/d)) on q and on k,
// read from the fused q|k|v projection, writing the rotated q out and k, v into their KV pages;
// plus the page copies of fork / CoW.
//
// KV storage (bf16), K and V in separate buffers of the same layout:
//     [layer][page][slot in page][kv head][head dim]
// A token's slot = page * page_size + offset; `layer_off` = layer * pages * page_size.
//
// rope_store_kv: grid (n_tokens), block 128. qkv f32 [n, (hq + 2hk)*hd], each row q, k, v side
//   by side (one GEMM); q f32 [n, hq*hd] out (rotated); pos, slot u32 [n]; inv_freq f64 [hd/2] (computed on the host exactly as the
//   CPU backend does). cos/sin are taken in f64 and rounded to f32, like the CPU.
//   Per rotated pair 6 FLOPs (4 mul, 2 add); per token hd/2 sin + hd/2 cos.
// kv_copy: grid (n_copies, layers), block 256. copies = (src page, dst page, len) u32 triples;
//   copies len slots of every layer, K and V.
#include "common.cuh"

// Rotates pair (i, i + half) of head `in` into `out` (which may be `in`).
__device__ __forceinline__ void rotate(const float* in, float* out, const float* c, const float* s,
                                       int half, int i) {
    const float a = in[i], b = in[i + half];
    out[i] = a * c[i] - b * s[i];
    out[i + half] = b * c[i] + a * s[i];
}

extern "C" __global__ void rope_store_kv(const float* __restrict__ qkv, float* __restrict__ q,
                                         bf16* __restrict__ kc,
                                         bf16* __restrict__ vc, const uint32_t* __restrict__ pos,
                                         const uint32_t* __restrict__ slots,
                                         const double* __restrict__ inv_freq, int hq, int hk,
                                         int hd, long long layer_off) {
    DYNAMIC_SMEM(float, cs);  // cos [hd/2], sin [hd/2], k row [hk*hd]
    const int half = hd / 2;
    float* cosv = cs;
    float* sinv = cs + half;
    float* krow = cs + hd;
    const size_t t = blockIdx.x;
    const double p = (double)pos[t];
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double sn, cn;
        sincos(p * inv_freq[i], &sn, &cn);
        cosv[i] = (float)cn;
        sinv[i] = (float)sn;
    }
    const int qd = hq * hd, kd = hk * hd;
    const float* in = qkv + t * (size_t)(qd + 2 * kd);
    const float* k = in + qd;
    const float* v = in + qd + kd;
    for (int i = threadIdx.x; i < kd; i += blockDim.x) krow[i] = k[i];
    __syncthreads();
    float* qr = q + t * (size_t)qd;
    for (int j = threadIdx.x; j < hq * half; j += blockDim.x) {
        const int h = j / half, i = j % half;
        rotate(in + h * hd, qr + h * hd, cosv, sinv, half, i);
    }
    for (int j = threadIdx.x; j < hk * half; j += blockDim.x) {
        const int h = j / half, i = j % half;
        rotate(krow + h * hd, krow + h * hd, cosv, sinv, half, i);
    }
    __syncthreads();
    const size_t at = kv_offset(layer_off, slots[t], hk, 0, hd);
    for (int i = threadIdx.x; i < kd; i += blockDim.x) {
        kc[at + i] = f2bf(krow[i]);
        vc[at + i] = f2bf(v[i]);
    }
}

extern "C" __global__ void kv_copy(bf16* __restrict__ kc, bf16* __restrict__ vc,
                                   const uint32_t* __restrict__ copies, int page_size,
                                   long long layer_stride, int row) {
    const uint32_t src = copies[3 * blockIdx.x], dst = copies[3 * blockIdx.x + 1],
                   len = copies[3 * blockIdx.x + 2];
    const size_t base = (size_t)blockIdx.y * layer_stride * row;
    const size_t s0 = base + (size_t)src * page_size * row;
    const size_t d0 = base + (size_t)dst * page_size * row;
    const size_t n = (size_t)len * row;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
        kc[d0 + i] = kc[s0 + i];
        vc[d0 + i] = vc[s0 + i];
    }
}
