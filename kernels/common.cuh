// Shared helpers for ponder's kernels. Storage: weights and KV in bf16 (raw uint16 bits on the
// Rust side), activations in f32 (GEMM inputs in bf16); accumulation always in f32.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#define NEG_INF (__int_as_float(0xff800000))

// The launch's dynamic shared memory as `T name[]`, and a static shared array `T name[n]`
// (16-byte aligned). The CPU emulator (csrc/emu/smem.cpp) hands out arrays of its own
// instead: poisoned at every block's start and fenced by guards checked at its end.
#ifdef PONDER_EMU
#define DYNAMIC_SMEM(T, name) T* const name = (T*)::emu::dyn_smem
#define STATIC_SMEM(T, name, n)        \
    static char name##_emu_site;       \
    T* const name = (T*)::emu::static_smem(&name##_emu_site, #name, sizeof(T) * (n))
#else
#define DYNAMIC_SMEM(T, name) extern __shared__ __align__(16) T name[]
#define STATIC_SMEM(T, name, n) __shared__ __align__(16) T name[n]
#endif

__device__ __forceinline__ float bf2f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 f2bf(float x) { return __float2bfloat16_rn(x); }

// Two bf16 packed in 32 bits: low half = first (lower address / lower index).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    uint32_t a = (uint32_t)__bfloat16_as_ushort(f2bf(lo));
    uint32_t b = (uint32_t)__bfloat16_as_ushort(f2bf(hi));
    return a | (b << 16);
}
__device__ __forceinline__ float lo_bf16(uint32_t v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float hi_bf16(uint32_t v) { return __uint_as_float(v & 0xffff0000u); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block in a fixed order (deterministic). `scratch` holds >= 32 floats. Every
// thread gets the result. blockDim.x must be a multiple of 32.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = lane < nw ? scratch[lane] : 0.0f;
    t = warp_sum(t);
    return t;
}

// Row offset of (layer, slot, kv head) in the paged KV storage
// [layer][page][slot in page][kv head][head dim]; `layer_off` = layer * pages * page_size.
__device__ __forceinline__ size_t kv_offset(long long layer_off, long long slot, int kv_heads,
                                           int head, int head_dim) {
    return ((size_t)(layer_off + slot) * kv_heads + head) * head_dim;
}

// Slot of logical key position `kp` through a page table.
__device__ __forceinline__ long long kv_slot(const uint32_t* pages, int kp, int page_size) {
    return (long long)pages[kp / page_size] * page_size + kp % page_size;
}

// The first key position a query at `pos` may see (sliding window; 0 = none).
__device__ __forceinline__ int first_visible(int pos, int window) {
    return (window > 0 && pos + 1 > window) ? pos + 1 - window : 0;
}
