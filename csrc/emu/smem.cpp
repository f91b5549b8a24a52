// The CUDA emulator's shared memory: each block starts with fresh, poisoned shared memory
// (0xff bytes: NaN as floats, -1 as integers) as on a GPU, where it holds whatever the last
// block left, and every array is fenced by guard bytes that are checked when the block ends,
// so a write past either end of an array is an error of the launch, not a silent corruption
// of the next array.
//
// Static arrays are declared with STATIC_SMEM (kernels/common.cuh), which calls
// static_smem() with a tag unique to the declaration (and template instance): the first
// thread of a block to reach it places the array, the others get the same address. Dynamic
// shared memory (DYNAMIC_SMEM) is one more fenced array of the launch's size.
//
// Under valgrind (where its headers are installed) memcheck is told what CUDA leaves
// undefined: every array starts undefined (a read of an element no thread wrote, used in a
// branch or a result, is an "uninitialised value" error) and the guards are inaccessible (a
// read one past an array is an "invalid read" at the reading line, which the guard check
// alone misses). The requests cost a few instructions without valgrind.
#include "cuda_emu.h"

#include <string>
#include <vector>

#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define EMU_MEM_UNDEFINED(p, n) VALGRIND_MAKE_MEM_UNDEFINED(p, n)
#define EMU_MEM_DEFINED(p, n) VALGRIND_MAKE_MEM_DEFINED(p, n)
#define EMU_MEM_NOACCESS(p, n) VALGRIND_MAKE_MEM_NOACCESS(p, n)
#endif
#endif
#ifndef EMU_MEM_UNDEFINED
#define EMU_MEM_UNDEFINED(p, n) ((void)0)
#define EMU_MEM_DEFINED(p, n) ((void)0)
#define EMU_MEM_NOACCESS(p, n) ((void)0)
#endif

namespace emu {
namespace {
constexpr size_t kGuard = 64;
constexpr unsigned char kGuardByte = 0xa5;
constexpr size_t kStaticMax = 48 << 10;   // CUDA's limit on static shared memory per block
constexpr size_t kBlockMax = 232448;      // H100 / H200: 227 KiB per block, in all
constexpr size_t kMaxArrays = 64;

struct Array {
    const void* site;
    const char* name;
    size_t off, bytes;
};

// One launch at a time per OS thread (runtime.cpp refuses nested launches).
struct Arena {
    std::vector<unsigned char> mem;
    size_t dyn_bytes = 0;  // the dynamic array sits first, at kGuard
    size_t end = 0;        // first free byte (a guard follows every array)
    size_t static_bytes = 0;
    std::vector<Array> arrays;
};
thread_local Arena arena;

size_t align16(size_t x) { return (x + 15) & ~(size_t)15; }

// Places an array of `bytes` at the end of the arena, poisoned, with a guard after it.
size_t place(size_t bytes) {
    const size_t off = arena.end;
    unsigned char* p = arena.mem.data() + off;
    memset(p, 0xff, bytes);
    memset(p + bytes, kGuardByte, kGuard);
    EMU_MEM_UNDEFINED(p, bytes);
    EMU_MEM_NOACCESS(p + bytes, kGuard);
    arena.end = align16(off + bytes + kGuard);
    return off;
}

bool guard_intact(size_t from) {
    // The guard's own bytes (a write into it was reported by valgrind already).
    EMU_MEM_DEFINED(arena.mem.data() + from, kGuard);
    for (size_t i = 0; i < kGuard; ++i)
        if (arena.mem[from + i] != kGuardByte) return false;
    return true;
}
}  // namespace

void smem_begin_launch(size_t dyn_bytes) {
    // Room for the dynamic array, the static limit and every array's alignment and guard.
    // Kept between launches: every block poisons and fences what it places.
    const size_t need = align16(dyn_bytes) + kStaticMax + (kMaxArrays + 2) * (kGuard + 16);
    // (A launch that failed mid-block left its guards inaccessible: the resize copies them.)
    EMU_MEM_DEFINED(arena.mem.data(), arena.mem.size());
    if (arena.mem.size() < need) arena.mem.resize(need);
    arena.dyn_bytes = dyn_bytes;
}

unsigned char* smem_begin_block() {
#ifdef PONDER_EMU_TSAN
    // Under ThreadSanitizer (scripts/emu-racecheck.sh) the threads of different blocks are
    // unordered, as on a GPU, so a block must not inherit the last block's accesses to its
    // shared memory: a fresh allocation starts with no access history (the runtime's own
    // allocations are not recorded as accesses, see runtime.cpp).
    std::vector<unsigned char>(arena.mem.size()).swap(arena.mem);
#endif
    arena.arrays.clear();
    arena.static_bytes = 0;
    // Everything addressable again before it is re-poisoned and re-fenced.
    EMU_MEM_DEFINED(arena.mem.data(), arena.mem.size());
    memset(arena.mem.data(), kGuardByte, kGuard);
    arena.end = kGuard;
    place(arena.dyn_bytes);
    EMU_MEM_NOACCESS(arena.mem.data(), kGuard);
    return arena.mem.data() + kGuard;
}

std::string smem_end_block() {
    // What no array covers is checked as guard below or left as it is: addressable again.
    EMU_MEM_DEFINED(arena.mem.data(), arena.mem.size());
    if (!guard_intact(0)) return "a write before the start of the dynamic shared memory";
    if (!guard_intact(kGuard + arena.dyn_bytes))
        return "a write past the end of the dynamic shared memory (" +
               std::to_string(arena.dyn_bytes) + " bytes)";
    for (const Array& a : arena.arrays)
        if (!guard_intact(a.off + a.bytes))
            return std::string("a write past the end of shared array ") + a.name + " (" +
                   std::to_string(a.bytes) + " bytes)";
    return "";
}

void* static_smem(const void* site, const char* name, size_t bytes) {
    for (const Array& a : arena.arrays)
        if (a.site == site) return arena.mem.data() + a.off;
    if (arena.arrays.size() == kMaxArrays) fail("more than 64 static shared arrays in a block");
    if (arena.static_bytes + bytes > kStaticMax)
        fail("more than 48 KiB of static shared memory in a block");
    if (arena.static_bytes + bytes + arena.dyn_bytes > kBlockMax)
        fail("static and dynamic shared memory together exceed 227 KiB");
    arena.static_bytes += bytes;
    const size_t off = place(bytes);
    arena.arrays.push_back(Array{site, name, off, bytes});
    return arena.mem.data() + off;
}
}  // namespace emu
