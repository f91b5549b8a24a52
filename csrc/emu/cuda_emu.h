// The CUDA emulator's view of CUDA C++: enough of the language and of the device library for
// ponder's kernels/*.cu to compile unchanged with the host C++ compiler and run on the CPU.
// build.rs force-includes this header (-include) before every kernel file; runtime.cpp runs
// the launches. Semantics, not speed: every thread of a block is a fiber, __syncthreads and
// the warp collectives (shuffles, mma.sync) are real rendezvous of the fibers involved, and a
// launch that would deadlock or shuffle with an exited lane on a GPU is an error here.
//
// What it cannot show: data races and memory-ordering bugs (fibers switch only at barriers
// and collectives) unless built for ThreadSanitizer (scripts/emu-racecheck.sh), performance,
// and the device's exact libm rounding (expf, logf, sincos come from the host's libm).
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <string>
#include <type_traits>
#include <utility>

#define PONDER_EMU 1

// ------------------------------------------------------------------ language
#ifdef PONDER_EMU_SCAN
// build.rs preprocesses each kernel file with this defined to find its kernels' names (the
// identifier after each marker, macros such as PREFILL_ENTRY already expanded).
#define __global__ PONDER_EMU_GLOBAL
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Shared memory comes from smem.cpp, fresh, poisoned and fenced for every block: kernels
// declare it with STATIC_SMEM / DYNAMIC_SMEM (kernels/common.cuh), never __shared__ itself.
#define __shared__ _Pragma("GCC error \"declare shared memory with STATIC_SMEM (kernels/common.cuh)\"")

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};

namespace emu {
// Set by the scheduler before it resumes a fiber.
extern thread_local const uint3* cur_tid;
extern thread_local uint3 block_idx;
extern thread_local dim3 block_dim, grid_dim;
extern thread_local unsigned char* dyn_smem;

// smem.cpp. The calling block's array for the declaration `site` (placed, poisoned and
// fenced on first use); the launch's and block's set-up (a block's returns its dynamic
// shared memory); the guards' verdict at a block's end ("" when intact).
void* static_smem(const void* site, const char* name, size_t bytes);
void smem_begin_launch(size_t dyn_bytes);
unsigned char* smem_begin_block();
std::string smem_end_block();

void syncthreads();
// __syncwarp: a rendezvous of the warp that also orders its lanes' memory accesses.
void syncwarp(unsigned mask);
// Every lane of the calling thread's warp deposits `n` (<= 64) bytes from `in`; once all 32
// have, each gets all 32 deposits in `out` (32 * n bytes, lane order). `mask` must name the
// whole warp (ponder's kernels use full-warp collectives only).
void warp_collect(unsigned mask, const void* in, size_t n, void* out);
// The same rendezvous, returning only lane `src`'s deposit (a shuffle).
void warp_fetch(unsigned mask, const void* in, size_t n, int src, void* out);
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 with d as both C and D, in the PTX
// ISA's fragment layouts (not the kernels' reading of them).
void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
[[noreturn]] void fail(const char* what);
inline int lane_id() { return (int)(cur_tid->x + block_dim.x * (cur_tid->y + block_dim.y * cur_tid->z)) & 31; }
}  // namespace emu

#define threadIdx (*::emu::cur_tid)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define warpSize 32

#define __syncthreads() ::emu::syncthreads()

// ------------------------------------------------------------------ vector types
#define EMU_VEC2(T, N, A) \
    struct __attribute__((aligned(A))) N { T x, y; }; \
    inline N make_##N(T x, T y) { return N{x, y}; }
#define EMU_VEC4(T, N, A) \
    struct __attribute__((aligned(A))) N { T x, y, z, w; }; \
    inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
EMU_VEC2(float, float2, 8)
EMU_VEC4(float, float4, 16)
EMU_VEC2(int, int2, 8)
EMU_VEC4(int, int4, 16)
EMU_VEC2(unsigned, uint2, 8)
EMU_VEC4(unsigned, uint4, 16)
#undef EMU_VEC2
#undef EMU_VEC4

// ------------------------------------------------------------------ bits and bf16
template <class To, class From>
inline To emu_bits(From f) {
    static_assert(sizeof(To) == sizeof(From), "same size");
    To t;
    memcpy(&t, &f, sizeof t);
    return t;
}
inline float __int_as_float(int x) { return emu_bits<float>(x); }
inline float __uint_as_float(unsigned x) { return emu_bits<float>(x); }
inline int __float_as_int(float x) { return emu_bits<int>(x); }
inline unsigned __float_as_uint(float x) { return emu_bits<unsigned>(x); }
inline long long __double_as_longlong(double x) { return emu_bits<long long>(x); }
inline double __longlong_as_double(long long x) { return emu_bits<double>(x); }

struct __nv_bfloat16 {
    uint16_t bits_;
};
inline float __bfloat162float(__nv_bfloat16 h) { return emu_bits<float>((uint32_t)h.bits_ << 16); }
// Round to nearest even; NaN stays NaN (quiet).
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u = emu_bits<uint32_t>(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(uint16_t)((u >> 16) | 0x40u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(uint16_t)(u >> 16)};
}
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits_; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16{x}; }

// ------------------------------------------------------------------ math
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
template <class A, class B>
inline typename std::common_type<A, B>::type min(A a, B b) {
    return b < a ? b : a;
}
template <class A, class B>
inline typename std::common_type<A, B>::type max(A a, B b) {
    return a < b ? b : a;
}

// ------------------------------------------------------------------ warp collectives
template <class T>
inline T emu_shfl_from(unsigned mask, T v, int src) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 64, "shuffle type");
    T out;
    ::emu::warp_fetch(mask, &v, sizeof(T), src & 31, &out);
    return out;
}
template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    const int lane = ::emu::lane_id();
    return emu_shfl_from(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    const int lane = ::emu::lane_id();
    const int src = lane ^ lane_mask;
    // A source beyond the lane's width segment returns the lane's own value (PTX shfl.bfly).
    const bool out = (src & ~(width - 1)) != (lane & ~(width - 1));
    return emu_shfl_from(mask, v, out ? lane : src);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = ::emu::lane_id();
    const int seg = lane & ~(width - 1);
    const int src = lane - (int)delta;
    return emu_shfl_from(mask, v, src < seg ? lane : src);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    const int lane = ::emu::lane_id();
    const int seg_end = (lane & ~(width - 1)) + width;
    const int src = lane + (int)delta;
    return emu_shfl_from(mask, v, src >= seg_end ? lane : src);
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::emu::syncwarp(mask); }

// ------------------------------------------------------------------ kernels' entry thunks
namespace emu {
template <class... A, size_t... I>
inline void invoke_at(void (*f)(A...), void** args, std::index_sequence<I...>) {
    f(*static_cast<typename std::remove_cv<typename std::remove_reference<A>::type>::type*>(
        args[I])...);
}
template <class... A>
inline void invoke(void (*f)(A...), void** args) {
    invoke_at(f, args, std::index_sequence_for<A...>{});
}
}  // namespace emu

// build.rs appends one of these per kernel to each kernel file's emulator translation unit.
#define PONDER_EMU_KERNEL(f) \
    extern "C" void ponder_emu_k_##f(void** args) { ::emu::invoke(&f, args); }
