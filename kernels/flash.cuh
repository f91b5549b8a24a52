// Flash attention core (FA2 style: online softmax, tensor cores through mma.sync m16n8k16
// bf16 → f32), shared by attn_prefill.cu (causal / sliding window / Quiet-STaR thought mask)
// and attn_tree.cu (branch queries over a shared prefix).
//
// Block: 128 threads = 4 warps; a tile of 64 query rows (16 per warp) against key tiles of 64
// keys read from the paged KV storage into shared memory (bf16, rows padded by 8 elements so
// fragment loads are free of bank conflicts). Keys beyond kv_len are zero-filled and masked,
// so stale or poisoned slots are never used.
//
// Work items (8 ints each, built on the host, which also counts executed FLOPs from them):
//   [0] a        prefill: token row of the tile's first query; prefix: first member index
//   [1] n_rows   prefill: valid query rows (<= 64);           prefix: members in the tile
//   [2] qpos0    prefill: position of the first query row (thought block: its index in block 0)
//   [3] kt0, [4] kt1   key tiles [kt0, kt1) visited (all of them fully computed)
//   [5] page_off offset of the sequence's page table in `pages`
//   [6] kv_len   keys [0, kv_len) exist (thought block: the block-0 length L)
//   [7] prefill: depth d of a Quiet-STaR thought block (0: causal); prefix: the partial slot
//       written
// Grid: (items, hq) for prefill (blockIdx.y = query head), (items, hk) for prefix
// (blockIdx.y = KV head; the tile's 64 rows are members × the group's query heads).
#pragma once
#include "common.cuh"

#define FA_BQ 64
#define FA_BK 64
#define FA_THREADS 128
#define FA_PAD 8

// Mirrors `FlashParams` in src/backend/cuda/attn.rs (repr(C)); keep the two in step.
struct FlashParams {
    const float* q;
    const bf16* kc;
    const bf16* vc;
    const uint32_t* pages;
    const int* items;
    const int* members;  // prefix: (q row, decode item) per member
    bf16* out;           // prefill: [tokens, hq*hd]
    float* o_part;       // prefix: [item][slot][hq][hd]
    float* lse_part;     // prefix: [item][slot][hq]
    long long layer_off;
    float scale;
    int q_stride;
    int hq;
    int hk;
    int group;
    int page_size;
    int window;  // sliding window, 0 = none
    int n_slots;
};

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
#ifdef PONDER_EMU
    ::emu::mma_m16n8k16_bf16(d, a, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ uint32_t pack_raw(bf16 lo, bf16 hi) {
    return (uint32_t)__bfloat16_as_ushort(lo) | ((uint32_t)__bfloat16_as_ushort(hi) << 16);
}

template <bool PREFIX>
__device__ __forceinline__ bool flash_row(const FlashParams& P, int a, int n_rows, int kvh, int r,
                                          int& qrow, int& head) {
    if (PREFIX) {
        const int m = r / P.group;
        head = kvh * P.group + r % P.group;
        qrow = m < n_rows ? P.members[2 * (a + m)] : 0;
        return m < n_rows;
    }
    head = blockIdx.y;
    qrow = a + r;
    return r < n_rows;
}

template <int HD, bool PREFIX>
__device__ __forceinline__ void flash_body(const FlashParams& P) {
    constexpr int BK = FA_BK, LD = HD + FA_PAD;
    constexpr int KS = HD / 16;  // k-steps of Q·Kᵀ
    constexpr int NT = BK / 8;   // n-tiles of S
    constexpr int ND = HD / 8;   // n-tiles of O
    static_assert(HD % 16 == 0, "head_dim must be a multiple of 16");
    STATIC_SMEM(bf16, smem, 2 * BK * LD);
    bf16* Ks = smem;
    bf16* Vs = smem + BK * LD;

    const int* it = P.items + 8 * blockIdx.x;
    const int a = it[0], n_rows = it[1], qpos0 = it[2], kt0 = it[3], kt1 = it[4];
    const int kv_len = it[6];
    const int depth = PREFIX ? 0 : it[7], out_slot = PREFIX ? it[7] : 0;
    const uint32_t* pages = P.pages + it[5];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int kvh = PREFIX ? (int)blockIdx.y : (int)blockIdx.y / P.group;

    // Q tile → bf16 in shared memory (rows 0..63 of the K/V area), then into A fragments.
    for (int idx = tid; idx < FA_BQ * (HD / 2); idx += FA_THREADS) {
        const int r = idx / (HD / 2), c = (idx % (HD / 2)) * 2;
        int qrow, head;
        float2 v = make_float2(0.0f, 0.0f);
        if (flash_row<PREFIX>(P, a, n_rows, kvh, r, qrow, head))
            v = *(const float2*)(P.q + (size_t)qrow * P.q_stride + head * HD + c);
        *(uint32_t*)&smem[r * LD + c] = pack_bf16(v.x, v.y);
    }
    __syncthreads();
    const int r0 = warp * 16 + g;
    uint32_t qa[KS][4];
#pragma unroll
    for (int s = 0; s < KS; ++s) {
        qa[s][0] = *(const uint32_t*)&smem[r0 * LD + 16 * s + 2 * t];
        qa[s][1] = *(const uint32_t*)&smem[(r0 + 8) * LD + 16 * s + 2 * t];
        qa[s][2] = *(const uint32_t*)&smem[r0 * LD + 16 * s + 2 * t + 8];
        qa[s][3] = *(const uint32_t*)&smem[(r0 + 8) * LD + 16 * s + 2 * t + 8];
    }
    __syncthreads();

    bool valid[2];
    int qpos[2];
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        int qrow, head;
        valid[rr] = flash_row<PREFIX>(P, a, n_rows, kvh, r0 + 8 * rr, qrow, head);
        qpos[rr] = qpos0 + r0 + 8 * rr;
    }
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    float o[ND][4];
#pragma unroll
    for (int nd = 0; nd < ND; ++nd) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.0f;

    for (int kt = kt0; kt < kt1; ++kt) {
        const int kbase = kt * BK;
        for (int idx = tid; idx < BK * (HD / 8); idx += FA_THREADS) {
            const int r = idx / (HD / 8), c = (idx % (HD / 8)) * 8;
            const int kp = kbase + r;
            uint4 k4 = make_uint4(0, 0, 0, 0), v4 = k4;
            if (kp < kv_len) {
                const size_t off =
                    kv_offset(P.layer_off, kv_slot(pages, kp, P.page_size), P.hk, kvh, HD) + c;
                k4 = *(const uint4*)(P.kc + off);
                v4 = *(const uint4*)(P.vc + off);
            }
            *(uint4*)&Ks[r * LD + c] = k4;
            *(uint4*)&Vs[r * LD + c] = v4;
        }
        __syncthreads();

        float s[NT][4];
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int ks = 0; ks < KS; ++ks) {
                const bf16* kr = &Ks[(8 * j + g) * LD + 16 * ks + 2 * t];
                mma_bf16(s[j], qa[ks], *(const uint32_t*)kr, *(const uint32_t*)(kr + 8));
            }
        }
        float mt[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int rr = e >> 1;
                const int kp = kbase + 8 * j + 2 * t + (e & 1);
                bool ok = valid[rr] && kp < kv_len;
                if (!PREFIX)
                    ok = ok && kp <= qpos[rr] && kp >= first_visible(qpos[rr], P.window);
                const float x = ok ? s[j][e] * P.scale : NEG_INF;
                s[j][e] = x;
                mt[rr] = fmaxf(mt[rr], x);
            }
        }
        float mu[2], alpha[2], ls[2] = {0.0f, 0.0f};
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            mt[rr] = fmaxf(mt[rr], __shfl_xor_sync(0xffffffffu, mt[rr], 1));
            mt[rr] = fmaxf(mt[rr], __shfl_xor_sync(0xffffffffu, mt[rr], 2));
            const float mn = fmaxf(m[rr], mt[rr]);
            mu[rr] = mn == NEG_INF ? 0.0f : mn;  // all masked so far: keep exp() finite
            alpha[rr] = expf(m[rr] - mu[rr]);
            m[rr] = mn;
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float p = expf(s[j][e] - mu[e >> 1]);
                s[j][e] = p;
                ls[e >> 1] += p;
            }
        }
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            ls[rr] += __shfl_xor_sync(0xffffffffu, ls[rr], 1);
            ls[rr] += __shfl_xor_sync(0xffffffffu, ls[rr], 2);
            l[rr] = l[rr] * alpha[rr] + ls[rr];
        }
#pragma unroll
        for (int nd = 0; nd < ND; ++nd) {
            o[nd][0] *= alpha[0];
            o[nd][1] *= alpha[0];
            o[nd][2] *= alpha[1];
            o[nd][3] *= alpha[1];
        }
#pragma unroll
        for (int k2 = 0; k2 < BK / 16; ++k2) {
            const uint32_t pa[4] = {pack_bf16(s[2 * k2][0], s[2 * k2][1]),
                                    pack_bf16(s[2 * k2][2], s[2 * k2][3]),
                                    pack_bf16(s[2 * k2 + 1][0], s[2 * k2 + 1][1]),
                                    pack_bf16(s[2 * k2 + 1][2], s[2 * k2 + 1][3])};
            const int kr = 16 * k2 + 2 * t;
#pragma unroll
            for (int nd = 0; nd < ND; ++nd) {
                const int col = 8 * nd + g;
                const uint32_t b0 = pack_raw(Vs[kr * LD + col], Vs[(kr + 1) * LD + col]);
                const uint32_t b1 = pack_raw(Vs[(kr + 8) * LD + col], Vs[(kr + 9) * LD + col]);
                mma_bf16(o[nd], pa, b0, b1);
            }
        }
        __syncthreads();  // the next tile overwrites Ks / Vs
    }

    // Quiet-STaR thought block (depth d = item[7] > 0, L = kv_len): besides the block-0 prefix
    // (the tiles above), the query at (position i, depth d) sees its own thought tokens: keys
    // d'·L + i, 1 <= d' <= d (its own among them). The depth is the same for the whole item.
    if (depth > 0) {
        for (int dd = 1; dd <= depth; ++dd) {
            float dot[2];
            size_t off[2];
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                const int kk = dd * kv_len + (valid[rr] ? qpos[rr] : 0);
                off[rr] = kv_offset(P.layer_off, kv_slot(pages, kk, P.page_size), P.hk, kvh, HD);
                float acc = 0.0f;
                if (valid[rr]) {
#pragma unroll
                    for (int ks = 0; ks < KS; ++ks) {
                        const int col = 16 * ks + 2 * t;
                        const uint32_t k0 = *(const uint32_t*)(P.kc + off[rr] + col);
                        const uint32_t k1 = *(const uint32_t*)(P.kc + off[rr] + col + 8);
                        const uint32_t q0 = qa[ks][rr], q1 = qa[ks][rr + 2];
                        acc += lo_bf16(q0) * lo_bf16(k0) + hi_bf16(q0) * hi_bf16(k0) +
                               lo_bf16(q1) * lo_bf16(k1) + hi_bf16(q1) * hi_bf16(k1);
                    }
                }
                acc += __shfl_xor_sync(0xffffffffu, acc, 1);
                acc += __shfl_xor_sync(0xffffffffu, acc, 2);
                dot[rr] = acc * P.scale;
            }
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                if (!valid[rr]) continue;
                const float mn = fmaxf(m[rr], dot[rr]);
                const float al = expf(m[rr] - mn), p = expf(dot[rr] - mn);
                l[rr] = l[rr] * al + p;
                m[rr] = mn;
#pragma unroll
                for (int nd = 0; nd < ND; ++nd) {
                    const uint32_t v = *(const uint32_t*)(P.vc + off[rr] + 8 * nd + 2 * t);
                    o[nd][2 * rr] = o[nd][2 * rr] * al + p * lo_bf16(v);
                    o[nd][2 * rr + 1] = o[nd][2 * rr + 1] * al + p * hi_bf16(v);
                }
            }
        }
    }

#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        if (!valid[rr]) continue;
        int qrow, head;
        flash_row<PREFIX>(P, a, n_rows, kvh, r0 + 8 * rr, qrow, head);
        const float inv = 1.0f / l[rr];
        if (!PREFIX) {
            bf16* dst = P.out + (size_t)qrow * P.hq * HD + head * HD;
#pragma unroll
            for (int nd = 0; nd < ND; ++nd)
                *(uint32_t*)(dst + 8 * nd + 2 * t) =
                    pack_bf16(o[nd][2 * rr] * inv, o[nd][2 * rr + 1] * inv);
        } else {
            const int member = a + (r0 + 8 * rr) / P.group;
            const int item = P.members[2 * member + 1];
            const size_t base = ((size_t)item * P.n_slots + out_slot) * P.hq + head;
            float* dst = P.o_part + base * HD;
#pragma unroll
            for (int nd = 0; nd < ND; ++nd) {
                dst[8 * nd + 2 * t] = o[nd][2 * rr] * inv;
                dst[8 * nd + 2 * t + 1] = o[nd][2 * rr + 1] * inv;
            }
            if (t == 0) P.lse_part[base] = m[rr] + logf(l[rr]);
        }
    }
}
