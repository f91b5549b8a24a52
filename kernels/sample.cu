// Token sampling on the device, reproducing src/sample.rs: one block (1024 threads) per row.
//   greedy (temperature <= 0 or limit <= 1): argmax over logits[..limit], ties to the lowest id.
//   temperature: w_i = exp(f64(l_i − max) · (1/T)) (f64, as the CPU), total = Σ w;
//     top_k (0 < k < limit): w_i = 0 for the ids whose logit is below the k-th largest (f32's
//     total order, -0 as +0, ties at it kept), found by a bitwise search over order keys;
//     top_p >= 1: the first id whose cumulative weight (id order) exceeds u · total;
//     top_p < 1: the nucleus = the smallest prefix of ids sorted by (w desc, id asc) whose mass
//     reaches top_p · total; then the draw walks that sorted order: the first element whose
//     cumulative weight exceeds u · kept. Both are found without sorting: a bitwise search
//     for the weight value at the cut (Σ_{w >= τ} w is monotone in τ; 62 passes over the
//     row), then the m-th id (id order) among the ties at that weight.
// Sums are taken in a fixed order (deterministic), but not the CPU's sequential order, and
// CUDA's f64 exp may differ from the host's by an ulp: the chosen id equals the CPU's except
// when u falls within ~1e-15 (relative) of a boundary of the cumulative distribution.
// u (one uniform per row, from src/rng.rs on the host) f64 [rows]; w scratch f64 [rows][limit].
#include "common.cuh"

#define SB 1024

// Mirrors `SampleParams` in src/backend/cuda/sample.rs.
struct SampleParams {
    const float* logits;
    const double* u;
    double* w;
    uint32_t* out;
    double inv_t;
    float top_p;
    int ld;
    int limit;
    int greedy;
    int top_k;
};

template <typename T, typename Op>
__device__ T block_reduce(T v, T* sh, Op op) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    T r = sh[0];
    for (int i = 1; i < nw; ++i) r = op(r, sh[i]);
    return r;
}

// Exclusive prefix sum over threads (thread order); every thread gets its own.
template <typename T>
__device__ T block_excl_scan(T v, T* sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    T x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const T y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    T ex = __shfl_up_sync(0xffffffffu, x, 1);
    if (lane == 0) ex = 0;
    __syncthreads();
    if (lane == 31) sh[warp] = x;
    __syncthreads();
    T base = 0;
    for (int i = 0; i < warp; ++i) base += sh[i];
    return base + ex;
}

struct AddD { __device__ double operator()(double a, double b) const { return a + b; } };
struct AddI { __device__ int operator()(int a, int b) const { return a + b; } };
struct MaxI { __device__ int operator()(int a, int b) const { return a > b ? a : b; } };
struct MinI { __device__ int operator()(int a, int b) const { return a < b ? a : b; } };
struct MaxF { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };

__device__ __forceinline__ unsigned long long bits(double x) {
    return (unsigned long long)__double_as_longlong(x);
}

// A float's place in f32's total order, as an unsigned key (negatives reversed, below the
// positives), with -0 taken as +0 (they tie under HF's `<`): src/sample.rs's top_k_key
// compared by f32::total_cmp, as the CPU's top-k cut does.
__device__ __forceinline__ unsigned int order_key(float x) {
    if (x == 0.0f) x = 0.0f;
    const unsigned int b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The key of the k-th largest logit: the largest K with #{i : key(l_i) >= K} >= k.
__device__ unsigned int top_k_key(const float* l, int limit, int k, int* ish) {
    unsigned int key = 0;
    for (int b = 31; b >= 0; --b) {
        const unsigned int cand = key | (1u << b);
        int c = 0;
        for (int i = threadIdx.x; i < limit; i += SB) c += order_key(l[i]) >= cand;
        if (block_reduce(c, ish, AddI()) >= k) key = cand;
    }
    return key;
}

// Σ w_i over ids whose weight bits are >= tau.
__device__ double mass_ge(const double* w, int limit, unsigned long long tau, double* sh) {
    double s = 0.0;
    for (int i = threadIdx.x; i < limit; i += SB)
        if (bits(w[i]) >= tau) s += w[i];
    return block_reduce(s, sh, AddD());
}

// The largest weight τ (as bits) with Σ_{w >= τ} w >= target (strict: > target).
__device__ unsigned long long cut_weight(const double* w, int limit, double target, bool strict,
                                         double* sh) {
    unsigned long long tau = 0;
    for (int b = 61; b >= 0; --b) {  // weights lie in [0, 1]: bit 62 and up are never set
        const unsigned long long cand = tau | (1ull << b);
        const double s = mass_ge(w, limit, cand, sh);
        if (strict ? s > target : s >= target) tau = cand;
    }
    return tau;
}

__device__ int count_eq(const double* w, int limit, unsigned long long tau, int* ish) {
    int c = 0;
    for (int i = threadIdx.x; i < limit; i += SB) c += bits(w[i]) == tau;
    return block_reduce(c, ish, AddI());
}

// Writes the m-th (1-based, id order) id whose weight bits equal tau.
__device__ void pick_tied(const double* w, int limit, unsigned long long tau, int m, int* ish,
                          uint32_t* out) {
    const int chunk = (limit + SB - 1) / SB;
    const int b = min(limit, (int)threadIdx.x * chunk), e = min(limit, b + chunk);
    int c = 0;
    for (int i = b; i < e; ++i) c += bits(w[i]) == tau;
    const int ex = block_excl_scan(c, ish);
    if (ex < m && m <= ex + c) {
        int k = m - ex;
        for (int i = b; i < e; ++i)
            if (bits(w[i]) == tau && --k == 0) {
                *out = (uint32_t)i;
                break;
            }
    }
}

extern "C" __global__ void __launch_bounds__(SB) sample_rows(const SampleParams P) {
    STATIC_SMEM(double, dsh, 32);
    STATIC_SMEM(int, ish, 32);
    STATIC_SMEM(float, fsh, 32);
    const size_t row = blockIdx.x;
    const float* l = P.logits + row * P.ld;
    uint32_t* out = P.out + row;
    const int limit = P.limit, tid = threadIdx.x;

    // argmax, ties to the lowest id (also the top_p <= 0 case below); and whether any
    // logit is NaN or infinite, which the host turns into an error (no id means anything).
    float bv = NEG_INF;
    int bi = 0x7fffffff, bad = 0;
    for (int i = tid; i < limit; i += SB) {
        if (l[i] > bv || (l[i] == bv && i < bi)) { bv = l[i]; bi = i; }
        bad |= !isfinite(l[i]);
    }
    if (block_reduce(bad, ish, MaxI())) {
        if (tid == 0) *out = 0xffffffffu;
        return;
    }
    const float mx = block_reduce(bv, fsh, MaxF());
    const int arg = block_reduce(bv == mx ? bi : 0x7fffffff, ish, MinI());
    if (P.greedy || limit <= 1) {
        if (tid == 0) *out = (uint32_t)(arg == 0x7fffffff ? 0 : arg);
        return;
    }
    double* w = P.w + row * (size_t)limit;
    // Every key passes the cut 0 (no top-k).
    const unsigned int cut = (P.top_k > 0 && P.top_k < limit) ? top_k_key(l, limit, P.top_k, ish) : 0u;
    double part = 0.0;
    for (int i = tid; i < limit; i += SB) {
        const double x = order_key(l[i]) >= cut ? exp((double)(l[i] - mx) * P.inv_t) : 0.0;
        w[i] = x;
        part += x;
    }
    __syncthreads();  // w visible to the whole block
    const double total = block_reduce(part, dsh, AddD());
    const double u = P.u[row];

    if (P.top_p >= 1.0f) {
        const double r = u * total;
        const int chunk = (limit + SB - 1) / SB;
        const int b = min(limit, tid * chunk), e = min(limit, b + chunk);
        double cs = 0.0;
        int last = -1;
        for (int i = b; i < e; ++i) {
            cs += w[i];
            if (w[i] > 0.0) last = i;
        }
        const double ex = block_excl_scan(cs, dsh);
        const int first = block_reduce((cs > 0.0 && ex + cs > r) ? tid : SB, ish, MinI());
        const int last_pos = block_reduce(last, ish, MaxI());
        if (first == SB) {  // rounding pushed r past the total: the CPU's fallback
            if (tid == 0) *out = (uint32_t)max(last_pos, 0);
        } else if (tid == first) {
            double rr = r - ex;
            int pick = last;
            for (int i = b; i < e; ++i) {
                rr -= w[i];
                if (rr < 0.0) { pick = i; break; }
            }
            *out = (uint32_t)pick;
        }
        return;
    }

    const double target = (double)fmaxf(P.top_p, 0.0f) * total;
    if (target <= 0.0) {  // the nucleus is the single most likely id
        if (tid == 0) *out = (uint32_t)arg;
        return;
    }
    // The cut: weight wc, the first m of its ties (id order) complete the nucleus.
    const unsigned long long tc = cut_weight(w, limit, target, false, dsh);
    const double wc = __longlong_as_double((long long)tc);
    const double gt_c = mass_ge(w, limit, tc + 1, dsh);
    const int eq_c = count_eq(w, limit, tc, ish);
    int m = wc > 0.0 ? (int)ceil((target - gt_c) / wc) : eq_c;
    m = max(1, min(m, eq_c));
    const double kept = gt_c + (double)m * wc;
    // The draw along the sorted nucleus: the first element whose cumulative weight exceeds r.
    const double r = u * kept;
    unsigned long long tp = cut_weight(w, limit, r, true, dsh);
    const double wp = __longlong_as_double((long long)tp);
    const double gt_p = mass_ge(w, limit, tp + 1, dsh);
    const int eq_p = count_eq(w, limit, tp, ish);
    int mp = wp > 0.0 ? (int)floor((r - gt_p) / wp) + 1 : eq_p;
    mp = max(1, min(mp, eq_p));
    if (tp < tc || (tp == tc && mp > m) || eq_p == 0) {  // past the nucleus: its last element
        tp = tc;
        mp = m;
    }
    pick_tied(w, limit, tp, mp, ish, out);
}
