//! Library code that panics on bad input instead of returning an error (the tokenizers crate
//! on some tokenizer.json files: an empty Replace pattern, a zero FixedLength, a corrupt
//! Precompiled charsmap): `contain` runs it, and its panic becomes an error, one line,
//! without the default hook's message and backtrace note on stderr.
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Whether this thread is inside `contain` (its panics are reported as errors).
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Runs `f`; a panic inside it is returned as an error naming `what`.
pub fn contain<T>(what: &str, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = CONTAINED.with(|c| c.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(outer));
    r.map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        anyhow::anyhow!("{what}: {}", msg.lines().next().unwrap_or(""))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_becomes_an_error_and_nesting_restores_the_flag() {
        let e = super::contain("loading x", || -> u32 {
            panic!("index 3 out of bounds\nmore")
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "loading x: index 3 out of bounds");
        let v = super::contain("outer", || {
            let inner = super::contain("inner", || panic!("boom"));
            assert!(inner.is_err());
            super::CONTAINED.with(std::cell::Cell::get)
        })
        .unwrap();
        assert!(v, "still contained after an inner call returns");
        assert!(!super::CONTAINED.with(std::cell::Cell::get));
        assert_eq!(super::contain("ok", || 7).unwrap(), 7);
    }
}
