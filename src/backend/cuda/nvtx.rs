//! NVTX ranges, one per phase of the work (prefill, decode, thought, mix, prm, sample), so a
//! profiler's timeline shows which kernels belong to which part of a method. The calls go
//! through csrc/nvtx.c (NVTX 3 is header-only); without a profiler attached they cost a branch.
use crate::flops::Phase;
use std::ffi::{c_char, c_int, CStr};
use std::sync::Mutex;

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

/// The phase range now open, if any: a phase change closes it and opens the next one.
#[derive(Default)]
pub(crate) struct PhaseRanges {
    open: Mutex<Option<Phase>>,
}

impl PhaseRanges {
    pub(crate) fn enter(&self, p: Phase) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if *open == Some(p) {
            return;
        }
        // SAFETY: the shim takes a NUL-terminated static string; push/pop are balanced here.
        unsafe {
            if open.is_some() {
                ponder_nvtx_pop();
            }
            ponder_nvtx_push(range_name(p).as_ptr());
        }
        *open = Some(p);
    }
}

impl Drop for PhaseRanges {
    fn drop(&mut self) {
        if self.open.get_mut().map(|o| o.is_some()).unwrap_or(false) {
            // SAFETY: closes the range `enter` opened.
            unsafe { ponder_nvtx_pop() };
        }
    }
}
