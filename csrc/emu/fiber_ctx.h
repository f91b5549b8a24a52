// The CUDA emulator's fiber contexts (runtime.cpp): a fresh context that starts in a given
// function on a given stack, and a switch between two contexts. Included by runtime.cpp only
// (it defines the x86-64 switch routine).
#pragma once
#include <stddef.h>
#include <stdint.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// x86-64: a hand-written switch of the callee-saved registers (no system call, unlike
// swapcontext's signal-mask save, which made the emulator spend most of its time in the
// kernel). Elsewhere: ucontext.
#if defined(__x86_64__)
extern "C" void ponder_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl ponder_emu_switch
    .type ponder_emu_switch, @function
ponder_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ponder_emu_switch, .-ponder_emu_switch
)");
struct Ctx {
    void* sp;
};
// A fresh context that starts in entry() (which must never return) on [stack, stack+size).
static void ctx_init(Ctx& c, void* stack, size_t size, void (*entry)()) {
    uintptr_t top = ((uintptr_t)stack + size) & ~(uintptr_t)15;
    uint64_t* p = (uint64_t*)top;
    p[-1] = 0;                  // alignment: entry starts with rsp % 16 == 8, as after a call
    p[-2] = (uint64_t)entry;    // popped by ret
    for (int i = 3; i <= 8; ++i) p[-i] = 0;  // rbp, rbx, r12..r15
    uint32_t* csr = (uint32_t*)&p[-9];
    csr[0] = 0x1f80;            // MXCSR: round to nearest, exceptions masked
    csr[1] = 0x037f;            // x87 control word
    c.sp = &p[-9];
}
static inline void ctx_switch(Ctx& from, Ctx& to) { ponder_emu_switch(&from.sp, to.sp); }
#else
struct Ctx {
    ucontext_t uc;
};
static void ctx_init(Ctx& c, void* stack, size_t size, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
static inline void ctx_switch(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
#endif
