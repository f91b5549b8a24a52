// The CUDA emulator's ThreadSanitizer hooks (runtime.cpp; docs/cuda-emulator.md).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <atomic>

// Built for ThreadSanitizer (PONDER_EMU_TSAN, scripts/emu-racecheck.sh: the kernels are
// instrumented, the runtime is not), every thread of a block runs as a TSan fiber of its own,
// and the switches between fibers carry no ordering: TSan then orders two threads' accesses
// only through what orders them on a GPU — a __syncthreads of their block (a __syncwarp of
// their warp), the launch's start and end (stream order) — and reports every other pair of
// conflicting accesses as a race, whichever order the emulator happened to run them in.
// Shuffles and mma.sync exchange registers, not memory, so they order nothing. The threads of
// different blocks are unordered too, except two threads with the same index: they run on the
// same fiber (its stack is theirs), so TSan sees them in program order.
#ifdef PONDER_EMU_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#define EMU_TSAN_SWITCH(fiber) __tsan_switch_to_fiber(fiber, 1 /* no_sync */)
#define EMU_TSAN_ACQUIRE(addr) __tsan_acquire(addr)
#define EMU_TSAN_RELEASE(addr) __tsan_release(addr)
#else
#define EMU_TSAN_SWITCH(fiber) ((void)0)
#define EMU_TSAN_ACQUIRE(addr) ((void)0)
#define EMU_TSAN_RELEASE(addr) ((void)0)
#endif

// TSan sync objects of a block: its start, __syncthreads by barrier generation parity, and
// __syncwarp by warp and parity (a generation's arrivals must not be acquired by a thread
// still leaving the previous one), 8 bytes apart, taken from a ring so that consecutive
// blocks never share one (a wrap reuses an address 31,000 blocks later: harmless).
#ifdef PONDER_EMU_TSAN
constexpr size_t kTokStride = 8 * (1 + 2 + 2 * 32);
inline char* fresh_tokens() {
    alignas(64) static char ring[kTokStride << 15];
    static std::atomic<size_t> next{0};
    return ring + kTokStride * (next++ & ((1u << 15) - 1));
}
inline char* bar_tok(char* tok, uint64_t gen) { return tok + 8 * (1 + (gen & 1)); }
inline char* warp_tok(char* tok, int warp, uint64_t gen) {
    return tok + 8 * (3 + 2 * warp + (gen & 1));
}
#endif
