//! Where the CPU runs a forward pass: `Backend::run_pass` carries it onto rayon's pool, with
//! the caller's account. The logits must not depend on the pool's size (each output is one
//! fixed-order sum, whatever the split), and a pass must charge the account of the thread
//! that asked for it — also when several threads run passes at once, when rayon runs one
//! pass inside another's wait on the same pool thread, and when the caller is a pool thread.
use ponder::account;
use ponder::backend::cpu::Cpu;
use ponder::backend::Backend;
use ponder::flops::Ledger;
use ponder::generate::Runner;
use ponder::model::config::Config;
use ponder::model::llama::{Model, Synthetic};

fn model(be: &Cpu, name: &str) -> Model<Cpu> {
    Model::load(be, Config::builtin(name).unwrap(), &Synthetic { seed: 11 }).unwrap()
}

/// A 20-token prefill and one decode step; the bits of both passes' logits.
fn two_passes(be: &Cpu, m: &Model<Cpu>) -> Vec<u32> {
    let mut r = Runner::new(be, m, 8, 16).unwrap();
    let s = r.pool.create();
    let ids: Vec<u32> = (0..20).map(|i| (i * 37 % 400) as u32).collect();
    let mut bits = Vec::new();
    for feed in [&ids[..], &[9u32][..]] {
        let out = r.extend(&[(s, feed)]).unwrap();
        let logits = be.to_host(out.logits().unwrap()).unwrap();
        bits.extend(logits.iter().map(|x| x.to_bits()));
    }
    bits
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

#[test]
fn logits_are_the_same_bits_on_one_thread_and_on_three() {
    let be = Cpu::new();
    // Large enough that its matmuls and attention split into many tasks.
    let m = model(&be, "smollm2-135m");
    // From outside any pool (run_pass moves the pass onto the global one) and from inside
    // pools of 1 and 3 threads (run_pass runs it where it is).
    let outside = two_passes(&be, &m);
    let one = pool(1).install(|| two_passes(&be, &m));
    let three = pool(3).install(|| two_passes(&be, &m));
    assert!(!outside.is_empty());
    assert!(one == outside, "1 thread against the global pool");
    assert!(three == outside, "3 threads against the global pool");
}

#[test]
fn concurrent_passes_charge_each_callers_own_account() {
    let be = Cpu::new();
    let m = model(&be, "tiny");
    let (want_bits, want): (Vec<u32>, Ledger) = account::capture(|| two_passes(&be, &m));
    assert!(want.total().useful_flops > 0);
    let before = be.ledger().lock().unwrap().clone();
    let inner = pool(2);
    std::thread::scope(|sc| {
        for t in 0..4 {
            let (be, m, want, want_bits, inner) = (&be, &m, &want, &want_bits, &inner);
            sc.spawn(move || {
                for i in 0..8 {
                    let run = || account::capture(|| two_passes(be, m));
                    // Thread 0 asks from a pool thread of its own every other time.
                    let (bits, got) = if t == 0 && i % 2 == 1 {
                        inner.install(run)
                    } else {
                        run()
                    };
                    assert!(&got == want, "thread {t}, pass pair {i}: {got:?}");
                    assert!(&bits == want_bits, "thread {t}, pass pair {i}");
                }
            });
        }
    });
    // Every pass went to an account, none to the backend's own ledger.
    assert_eq!(*be.ledger().lock().unwrap(), before);
}
