// Shared-prefix (tree) attention, first half: the decode queries of many branches whose page
// tables start with the same pages, over that shared prefix, read once per KV head for all
// of them: the 64 rows of a tile are (branch, query head of the KV head's group) pairs, so the
// prefix becomes a matrix-matrix product on the tensor cores. Writes a normalised partial
// output and its log-sum-exp into the branch's last partial slot; each branch's own keys go
// through attn_decode (the other slots) and attn_merge combines them.
// Launch: grid (work items, hk), block 128.
#include "flash.cuh"

#define PREFIX_ENTRY(HD)                                                                    \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) attn_prefix_hd##HD(           \
        const FlashParams p) {                                                              \
        flash_body<HD, true>(p);                                                            \
    }

PREFIX_ENTRY(16)
PREFIX_ENTRY(32)
PREFIX_ENTRY(64)
PREFIX_ENTRY(128)
