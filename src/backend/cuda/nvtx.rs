//! NVTX ranges, one per phase of the work (prefill, decode, thought, mix, prm, sample), so a
//! profiler's timeline shows which kernels belong to which part of a method. The calls go
//! through csrc/nvtx.c (NVTX 3 is header-only); without a profiler attached they cost a branch.
use crate::flops::Phase;
use std::cell::Cell;
use std::ffi::{c_char, c_int, CStr};

extern "C" {
    fn ponder_nvtx_push(name: *const c_char) -> c_int;
    fn ponder_nvtx_pop() -> c_int;
}

fn range_name(p: Phase) -> &'static CStr {
    match p {
        Phase::Prefill => c"prefill",
        Phase::Decode => c"decode",
        Phase::Thought => c"thought",
        Phase::Mix => c"mix",
        Phase::Prm => c"prm",
        Phase::Sample => c"sample",
    }
}

thread_local! {
    /// The phase range open on this thread, if any. NVTX ranges are a per-thread stack, so
    /// with problems in flight (one worker thread each) every thread keeps its own.
    static OPEN: Cell<Option<Phase>> = const { Cell::new(None) };
}

/// One NVTX range per phase on each thread that runs work: a phase change closes the range
/// open on that thread and opens the next one.
#[derive(Default)]
pub(crate) struct PhaseRanges;

impl PhaseRanges {
    pub(crate) fn enter(&self, p: Phase) {
        OPEN.with(|open| {
            if open.get() == Some(p) {
                return;
            }
            // SAFETY: the shim takes a NUL-terminated static string; push and pop are
            // balanced on this thread.
            unsafe {
                if open.get().is_some() {
                    ponder_nvtx_pop();
                }
                ponder_nvtx_push(range_name(p).as_ptr());
            }
            open.set(Some(p));
        });
    }
}

impl Drop for PhaseRanges {
    fn drop(&mut self) {
        // Closes the dropping thread's range; other threads' ranges end with their threads.
        let _ = OPEN.try_with(|open| {
            if open.take().is_some() {
                // SAFETY: closes the range `enter` opened on this thread.
                unsafe { ponder_nvtx_pop() };
            }
        });
    }
}
