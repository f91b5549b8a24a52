/* NVTX ranges for the CUDA backend. NVTX 3 is header-only: these calls cost a branch until a
 * profiler (nsys, ncu) sets NVTX_INJECTION64_PATH, then they reach its injection library.
 * Rust cannot include the headers' static-inline implementation, hence this shim, which
 * build.rs compiles with the host C compiler when the `cuda` feature is on. */
#include <nvtx3/nvToolsExt.h>

int ponder_nvtx_push(const char *name) { return nvtxRangePushA(name); }

int ponder_nvtx_pop(void) { return nvtxRangePop(); }
