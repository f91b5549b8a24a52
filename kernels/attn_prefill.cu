// Prefill attention: every query row of the sequences with several new tokens, over its
// sequence's pages; causal with an optional sliding window, or, per work item, a depth block of
// Quiet-STaR's parallel thoughts with the thought-diagonal mask as an analytic predicate (see
// flash.cuh). GQA: query head h
// reads KV head h / group. Output bf16 [tokens, hq*hd] (the o_proj GEMM input).
// Launch: grid (work items, hq), block 128, static shared memory 2*64*(hd+8)*2 bytes.
#include "flash.cuh"

#define PREFILL_ENTRY(HD)                                                                   \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) attn_prefill_hd##HD(          \
        const FlashParams p) {                                                              \
        flash_body<HD, false>(p);                                                           \
    }

PREFILL_ENTRY(16)
PREFILL_ENTRY(32)
PREFILL_ENTRY(64)
PREFILL_ENTRY(128)
