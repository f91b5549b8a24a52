//! Per-problem accounts. When several problems are solved at once (`eval --in-flight N`), each
//! worker thread installs its problem's account: the ops the thread runs are charged to that
//! account's ledger instead of the backend's, and its phase is the thread's own. Forward passes
//! shared by several problems are run by one thread and split among the problems afterwards
//! (see batcher.rs). With no account installed everything goes to the backend's ledger.
//! A backend that runs a pass on another thread (the CPU's `Backend::run_pass`, on its pool)
//! installs the caller's account there for the pass.
use crate::flops::Ledger;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

/// One problem's costs so far.
#[derive(Clone, Debug, Default)]
pub struct Account {
    pub ledger: Ledger,
    /// Seconds this problem's thread spent waiting for shared forward passes.
    pub waited: f64,
    /// Seconds of shared forward passes charged to this problem (its share of each).
    pub charged: f64,
}

pub type SharedAccount = Arc<Mutex<Account>>;

thread_local! {
    static CURRENT: RefCell<Option<SharedAccount>> = const { RefCell::new(None) };
}

/// Makes `a` this thread's account; returns the one it replaces.
pub fn install(a: Option<SharedAccount>) -> Option<SharedAccount> {
    CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), a))
}

/// This thread's account, if one is installed.
pub fn current() -> Option<SharedAccount> {
    CURRENT.with(|c| c.borrow().clone())
}

pub fn lock(a: &SharedAccount) -> std::sync::MutexGuard<'_, Account> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the ledger this thread charges: its account's, else `fallback` (the backend's).
pub fn with_ledger<R>(fallback: &Mutex<Ledger>, f: impl FnOnce(&mut Ledger) -> R) -> R {
    match current() {
        Some(a) => f(&mut lock(&a).ledger),
        None => f(&mut fallback.lock().unwrap_or_else(|e| e.into_inner())),
    }
}

/// Runs `f` with `a` as this thread's account, and puts the one it replaces back afterwards,
/// even if `f` panics: a pass carried to another thread (`Backend::run_pass`) charges the
/// account of the thread that asked for it.
pub fn with_installed<R>(a: Option<SharedAccount>, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(install(a));
    f()
}

/// Puts a thread's previous account back when dropped.
struct Restore(Option<SharedAccount>);
impl Drop for Restore {
    fn drop(&mut self) {
        install(self.0.take());
    }
}

/// Runs `f` with a scratch account installed and returns its result with what it charged:
/// one forward pass's counts, to be divided among problems or phases (src/split.rs). The
/// thread's own account is back in place afterwards.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, Ledger) {
    let scratch: SharedAccount = Arc::new(Mutex::new(Account::default()));
    // Put back even if `f` panics (a batcher catches a pass's panic and goes on).
    let out = with_installed(Some(scratch.clone()), f);
    let ledger = std::mem::take(&mut lock(&scratch).ledger);
    (out, ledger)
}

/// (waited, charged) seconds of this thread's account; zeros without one.
pub fn times() -> (f64, f64) {
    current().map_or((0.0, 0.0), |a| {
        let g = lock(&a);
        (g.waited, g.charged)
    })
}
