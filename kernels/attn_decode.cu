// Paged decode attention (one new token per sequence), split-K over the sequence, plus the
// log-sum-exp merge of the splits (and of the shared-prefix partial from attn_tree.cu).
//
// attn_decode: grid (items, hk, splits), block 128, dynamic shared memory
//   4 * (group*hd + group*chunk + lanes*group*hd + 2*group) bytes, lanes = 128 / (hd/2).
//   One block = one KV head × one split of `chunk` keys of one sequence, for all `group`
//   query heads of that KV head together (each K/V row is read once for the group):
//   scores into shared memory, an exact softmax over the split, then P·V.
//   direct = 1 (a single split, no prefix): writes the bf16 output itself. Else writes the
//   normalised partial o and lse = max + log(sum) into slot `split` of its item.
//   Items (4 ints): q row, first key, end key (exclusive), page-table offset. Items are on
//   grid x (up to 2^31 - 1; one per decoding token of a batch, which can pass grid z's 65535
//   with thousands of branches in flight), splits (at most 63) on z.
// attn_merge: grid (items, hq), block 64: out = Σ_s e^(lse_s − M)·o_s / Σ_s e^(lse_s − M).
#include "common.cuh"

#define DEC_THREADS 128
#define DEC_MAXG 16
#define MERGE_MAX_SLOTS 64

// Mirrors `DecodeParams` in src/backend/cuda/attn.rs.
struct DecodeParams {
    const float* q;
    const bf16* kc;
    const bf16* vc;
    const uint32_t* pages;
    const int* items;
    bf16* out;
    float* o_part;
    float* lse_part;
    long long layer_off;
    float scale;
    int q_stride;
    int hq;
    int hk;
    int group;
    int hd;
    int page_size;
    int chunk;
    int n_slots;
    int direct;
};

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attn_decode(const DecodeParams P) {
    DYNAMIC_SMEM(float, sm);
    const int G = P.group, HD = P.hd, HP = HD / 2, lanes = DEC_THREADS / HP;
    float* qs = sm;                    // [G][HD]
    float* sc = qs + G * HD;           // [G][chunk]
    float* red = sc + G * P.chunk;     // [lanes][G][HD]
    float* stats = red + lanes * G * HD;  // max [G], sum [G]
    const int item = blockIdx.x;
    const int* it = P.items + 4 * (size_t)item;
    const int q_row = it[0];
    const uint32_t* pages = P.pages + it[3];
    const int split = blockIdx.z, kvh = blockIdx.y, tid = threadIdx.x;
    const int lo = it[1] + split * P.chunk;
    const int hi = min(it[2], lo + P.chunk);
    const int n = hi - lo;
    if (n <= 0) {  // an empty split (partial mode only): contributes nothing to the merge
        for (int idx = tid; idx < G * HD; idx += DEC_THREADS) {
            const size_t base =
                ((size_t)item * P.n_slots + split) * P.hq + kvh * G + idx / HD;
            P.o_part[base * HD + idx % HD] = 0.0f;
            if (idx % HD == 0) P.lse_part[base] = NEG_INF;
        }
        return;
    }
    for (int idx = tid; idx < G * HD; idx += DEC_THREADS)
        qs[idx] = P.q[(size_t)q_row * P.q_stride + (size_t)kvh * G * HD + idx];
    __syncthreads();

    // Scores: one key per thread, all G heads at once (K row read with 16-byte loads).
    for (int j = tid; j < n; j += DEC_THREADS) {
        const size_t off =
            kv_offset(P.layer_off, kv_slot(pages, lo + j, P.page_size), P.hk, kvh, HD);
        float acc[DEC_MAXG];
#pragma unroll
        for (int h = 0; h < DEC_MAXG; ++h) acc[h] = 0.0f;
        for (int c = 0; c < HD; c += 8) {
            const uint4 k4 = *(const uint4*)(P.kc + off + c);
            const uint32_t w[4] = {k4.x, k4.y, k4.z, k4.w};
#pragma unroll
            for (int h = 0; h < DEC_MAXG; ++h) {
                if (h < G) {
                    const float* qh = qs + h * HD + c;
#pragma unroll
                    for (int e = 0; e < 4; ++e)
                        acc[h] += qh[2 * e] * lo_bf16(w[e]) + qh[2 * e + 1] * hi_bf16(w[e]);
                }
            }
        }
#pragma unroll
        for (int h = 0; h < DEC_MAXG; ++h)
            if (h < G) sc[h * P.chunk + j] = acc[h] * P.scale;
    }
    __syncthreads();

    // Exact softmax over the split, one warp per head.
    const int warp = tid >> 5, lane = tid & 31;
    for (int h = warp; h < G; h += DEC_THREADS / 32) {
        float* row = sc + h * P.chunk;
        float mx = NEG_INF;
        for (int j = lane; j < n; j += 32) mx = fmaxf(mx, row[j]);
        mx = warp_max(mx);
        float sum = 0.0f;
        for (int j = lane; j < n; j += 32) {
            const float e = expf(row[j] - mx);
            row[j] = e;
            sum += e;
        }
        sum = warp_sum(sum);
        if (lane == 0) {
            stats[h] = mx;
            stats[G + h] = sum;
        }
    }
    __syncthreads();

    // P·V: thread = (key lane, pair of dims); partial sums reduced in a fixed order.
    const int kl = tid / HP, dp = tid % HP;
    if (kl < lanes) {
        float acc[DEC_MAXG][2];
#pragma unroll
        for (int h = 0; h < DEC_MAXG; ++h) acc[h][0] = acc[h][1] = 0.0f;
        for (int j = kl; j < n; j += lanes) {
            const size_t off =
                kv_offset(P.layer_off, kv_slot(pages, lo + j, P.page_size), P.hk, kvh, HD);
            const uint32_t v = *(const uint32_t*)(P.vc + off + 2 * dp);
            const float v0 = lo_bf16(v), v1 = hi_bf16(v);
#pragma unroll
            for (int h = 0; h < DEC_MAXG; ++h) {
                if (h < G) {
                    const float p = sc[h * P.chunk + j];
                    acc[h][0] += p * v0;
                    acc[h][1] += p * v1;
                }
            }
        }
#pragma unroll
        for (int h = 0; h < DEC_MAXG; ++h) {
            if (h < G) {
                red[(kl * G + h) * HD + 2 * dp] = acc[h][0];
                red[(kl * G + h) * HD + 2 * dp + 1] = acc[h][1];
            }
        }
    }
    __syncthreads();
    for (int idx = tid; idx < G * HD; idx += DEC_THREADS) {
        const int h = idx / HD, d = idx % HD;
        float s = 0.0f;
        for (int k = 0; k < lanes; ++k) s += red[(k * G + h) * HD + d];
        const float val = s / stats[G + h];
        const int head = kvh * G + h;
        if (P.direct) {
            P.out[(size_t)q_row * P.hq * HD + head * HD + d] = f2bf(val);
        } else {
            const size_t base = ((size_t)item * P.n_slots + split) * P.hq + head;
            P.o_part[base * HD + d] = val;
            if (d == 0) P.lse_part[base] = stats[h] + logf(stats[G + h]);
        }
    }
}

extern "C" __global__ void attn_merge(const float* __restrict__ o_part,
                                      const float* __restrict__ lse_part,
                                      const int* __restrict__ items, bf16* __restrict__ out,
                                      int n_slots, int hq, int hd) {
    STATIC_SMEM(float, w, MERGE_MAX_SLOTS);
    STATIC_SMEM(float, den, 1);
    const int item = blockIdx.x, head = blockIdx.y;
    const size_t base = (size_t)item * n_slots * hq + head;  // slot s: base + s * hq
    if (threadIdx.x == 0) {
        float mx = NEG_INF;
        for (int s = 0; s < n_slots; ++s) mx = fmaxf(mx, lse_part[base + (size_t)s * hq]);
        float sum = 0.0f;
        for (int s = 0; s < n_slots; ++s) {
            const float l = lse_part[base + (size_t)s * hq];
            w[s] = l == NEG_INF ? 0.0f : expf(l - mx);
            sum += w[s];
        }
        den[0] = sum;
    }
    __syncthreads();
    const int q_row = items[4 * item];
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float num = 0.0f;
        for (int s = 0; s < n_slots; ++s)
            if (w[s] != 0.0f) num += w[s] * o_part[(base + (size_t)s * hq) * hd + d];
        out[(size_t)q_row * hq * hd + head * hd + d] = f2bf(num / den[0]);
    }
}
