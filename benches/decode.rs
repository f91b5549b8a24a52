//! CPU decode on the bundled default model (SmolLM2-135M-Instruct, f32 weights): one decode
//! step for a batch of 1 and of 8 sequences, each with a 64-token context. Criterion reports
//! the time per step and tokens/s; the GB/s of weights read is printed beside it.
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ponder::backend::cpu::Cpu;
use ponder::backend::Backend;
use ponder::generate::Runner;
use ponder::kv::SeqId;
use ponder::model::source::{cache_dir, load};
use std::time::Instant;

fn decode(c: &mut Criterion) {
    let be = Cpu::new();
    let m = load(&be, None, &cache_dir(None)).expect("default model");
    let weight_bytes = m.model.cfg.n_params() * 4;
    let mut g = c.benchmark_group("cpu_decode_smollm2_135m");
    g.sample_size(20);
    for batch in [1usize, 8] {
        let mut r = Runner::new(&be, &m.model, batch * 8, 16).unwrap();
        let prompt: Vec<u32> = (0..64).map(|i| (i * 97 % 40000 + 100) as u32).collect();
        let seqs: Vec<SeqId> = (0..batch).map(|_| r.pool.create()).collect();
        let items: Vec<(SeqId, &[u32])> = seqs.iter().map(|s| (*s, &prompt[..])).collect();
        r.extend(&items).unwrap();
        let tok = [42u32];
        let step: Vec<(SeqId, &[u32])> = seqs.iter().map(|s| (*s, &tok[..])).collect();
        let run = |r: &mut Runner<Cpu>| {
            r.extend(&step).unwrap();
            for s in &seqs {
                r.pool.truncate(*s, 64).unwrap();
            }
        };
        // A plain measurement for the GB/s line (criterion's own numbers are the reference).
        let t = Instant::now();
        let n = 10;
        for _ in 0..n {
            run(&mut r);
        }
        let per_step = t.elapsed().as_secs_f64() / n as f64;
        eprintln!(
            "batch {batch}: {:.2} ms/step, {:.1} tok/s, {:.2} GB/s of weights",
            per_step * 1e3,
            batch as f64 / per_step,
            weight_bytes as f64 / per_step / 1e9
        );
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            b.iter(|| run(&mut r))
        });
    }
    g.finish();
    let _ = be.ledger();
}

criterion_group!(benches, decode);
criterion_main!(benches);
