// Kernels that test the CUDA emulator itself (src/backend/cuda/emu.rs's unit tests). Built
// into the emulator's library only, never by nvcc.
#include "common.cuh"

#define FULL 0xffffffffu

// Block 64: the shuffle family's results for every thread, four per thread.
extern "C" __global__ void emu_test_shfl(int* out) {
    const int t = threadIdx.x;
    out[4 * t + 0] = __shfl_xor_sync(FULL, t, 5);
    out[4 * t + 1] = __shfl_up_sync(FULL, t, 3);
    out[4 * t + 2] = __shfl_down_sync(FULL, t, 7);
    out[4 * t + 3] = __shfl_xor_sync(FULL, t, 2, 8);
}

// Block 32: one mma.m16n8k16 with each lane's fragments read from a, b, c by lane.
extern "C" __global__ void emu_test_mma(const uint32_t* a, const uint32_t* b, const float* c,
                                        float* d) {
    const int l = threadIdx.x;
    const uint32_t fa[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
    float fd[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
    ::emu::mma_m16n8k16_bf16(fd, fa, b[2 * l], b[2 * l + 1]);
    for (int i = 0; i < 4; ++i) d[4 * l + i] = fd[i];
}

// Block 128, grid 3: every write before the barrier is seen after it, per block.
extern "C" __global__ void emu_test_barrier(int* out) {
    STATIC_SMEM(int, s, 128);
    const int t = threadIdx.x;
    s[t] = t + 1000 * (int)blockIdx.x;
    __syncthreads();
    out[blockIdx.x * 128 + t] = s[127 - t];
}

// Any block: the first word of dynamic shared memory, never written.
extern "C" __global__ void emu_test_dynsmem(unsigned* out) {
    DYNAMIC_SMEM(unsigned, sm);
    if (threadIdx.x == 0) out[blockIdx.x] = sm[0];
}

// Block 64: warp 0 and half of warp 1 wait at the barrier, the other half of warp 1 in a
// full-warp shuffle that can never complete: a deadlock.
extern "C" __global__ void emu_test_deadlock(int* out) {
    const int t = threadIdx.x;
    if (t >= 32 && t < 48) out[t] = __shfl_xor_sync(FULL, t, 1);
    __syncthreads();
}

// Any block size: a full-warp shuffle (a partial warp when the size is not a multiple of 32).
extern "C" __global__ void emu_test_shfl_any(int* out) {
    out[threadIdx.x] = __shfl_xor_sync(FULL, (int)threadIdx.x, 1);
}

// Block 32: lane 0 exits, the others shuffle.
extern "C" __global__ void emu_test_exited_lane(int* out) {
    if (threadIdx.x == 0) return;
    out[threadIdx.x] = __shfl_xor_sync(FULL, (int)threadIdx.x, 1);
}

// Block 64: the second warp leaves before the barrier the first warp waits at.
extern "C" __global__ void emu_test_barrier_after_exit(int* out) {
    if (threadIdx.x >= 32) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

// Block 64: a missing barrier between a write and another thread's read of it. Thread t reads
// what thread t-1 wrote: the forward order happens to satisfy that, the reverse one does not.
extern "C" __global__ void emu_test_racy_shift(int* out, int base) {
    STATIC_SMEM(int, s, 64);
    const int t = threadIdx.x;
    s[t] = base + t;
    out[t] = t > 0 ? s[t - 1] : base - 1;  // no __syncthreads() before the read: a race
}

// Block 32, grid 2: block 0 fills its static array; block 1 reads its own, never written.
extern "C" __global__ void emu_test_static_smem(unsigned* out) {
    STATIC_SMEM(unsigned, s, 32);
    if (blockIdx.x == 0) s[threadIdx.x] = 7;
    __syncthreads();
    out[blockIdx.x * 32 + threadIdx.x] = s[threadIdx.x];
}

// Block 32: thread 0 writes element `at` of a 16-int static array, or of the dynamic memory.
extern "C" __global__ void emu_test_smem_overrun(int* out, int at, int dynamic) {
    STATIC_SMEM(int, s, 16);
    DYNAMIC_SMEM(int, d);
    if (threadIdx.x == 0) {
        if (dynamic)
            d[at] = 1;
        else
            s[at] = 1;
    }
    out[threadIdx.x] = 0;
}
