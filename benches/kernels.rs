//! Every kernel of the Backend trait alone, on every backend present: the CPU always, CUDA when
//! built with `--features cuda` and a GPU answers. Shapes are a model's (PONDER_BENCH_MODEL:
//! a synthetic name; default smollm2-135m on the CPU and mistral-7b on CUDA) at prefill size
//! (512 tokens) and decode size (16 rows; attention over 1024 keys).
//!
//! Throughput is the ledger's own count for one call, measured by running it once before
//! timing: bytes for memory-bound kernels (criterion prints decimal GB/s, as the rooflines are), useful FLOPs for
//! compute-bound ones (criterion's "elem/s" are FLOP/s). The CUDA timings wait for the stream
//! after each batch of iterations, so they include every launch's whole run.
//! PONDER_BENCH_BACKENDS (default "cpu,cuda"; "cuda-emu" adds the CUDA emulator) picks the
//! backends.
//!     cargo bench --bench kernels [-- FILTER]
//!     PONDER_BENCH_BACKENDS=cuda cargo bench --features cuda --bench kernels
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ponder::backend::cpu::Cpu;
use ponder::backend::{AttnDims, Backend, TalkHead, WeightData};
use ponder::bench_cases as cases;
use ponder::flops::Counts;
use ponder::model::config::Config;
use ponder::rng::fill_uniform;
use ponder::sample::{sample, Sampling};
use std::borrow::Cow;
use std::time::{Duration, Instant};

const TOKENS: usize = 512;
const ROWS: usize = 16;
const CONTEXT: usize = 1024;

fn config(default: &str) -> (String, Config) {
    let name = std::env::var("PONDER_BENCH_MODEL").unwrap_or_else(|_| default.into());
    let name = name.trim_start_matches("synthetic:").to_string();
    let cfg = Config::builtin(&name).unwrap_or_else(|e| panic!("PONDER_BENCH_MODEL: {e:#}"));
    (name, cfg)
}

/// What `f` records in the ledger for one call.
fn counts<B: Backend>(be: &B, f: &mut impl FnMut()) -> Counts {
    let before = be.snapshot();
    f();
    be.snapshot().since(&before).total()
}

/// Benchmarks `f` as `name` in `g`, with its own ledger count as the throughput.
fn case<B: Backend>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    be: &B,
    sync: &dyn Fn(),
    name: &str,
    memory_bound: bool,
    mut f: impl FnMut(),
) {
    let c = counts(be, &mut f);
    sync();
    g.throughput(if memory_bound {
        Throughput::BytesDecimal(c.bytes)
    } else {
        Throughput::Elements(c.useful_flops)
    });
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            sync();
            t.elapsed()
        })
    });
}

/// A parameter as models hold it: a matrix as bf16 (synthetic and bf16 checkpoints), a vector
/// as f32.
fn weight<B: Backend>(be: &B, shape: &[usize], seed: u64) -> B::Weight {
    let n = shape.iter().product();
    let v = fill_uniform(seed, n, 0.05);
    let data = if shape.len() == 2 {
        WeightData::HostBf16(Cow::Owned(ponder::backend::round_to_bf16_bits(&v)))
    } else {
        WeightData::Host(Cow::Owned(v))
    };
    be.weight(shape, data).expect("weight")
}

/// The same matrix held as f32 (an f32 checkpoint, e.g. the bundled default model), which
/// only the CPU backend keeps as such.
fn weight_f32<B: Backend>(be: &B, shape: &[usize], seed: u64) -> B::Weight {
    let n = shape.iter().product();
    let v = fill_uniform(seed, n, 0.05);
    be.weight(shape, WeightData::Host(Cow::Owned(v)))
        .expect("weight")
}

fn tensor<B: Backend>(be: &B, rows: usize, cols: usize, seed: u64) -> B::Tensor {
    be.tensor(rows, cols, &fill_uniform(seed, rows * cols, 1.0))
        .expect("tensor")
}

fn kernels<B: Backend>(c: &mut Criterion, be: &B, sync: &dyn Fn(), model: &str, cfg: &Config) {
    let (d, ff) = (cfg.hidden_size, cfg.intermediate_size);
    let dims: AttnDims = cfg.attn_dims();
    let (qd, kd) = (cfg.q_dim(), cfg.kv_dim());
    let mut g = c.benchmark_group(format!("{}/{model}", be.name()));
    g.sample_size(10).measurement_time(measure());
    let ok = |r: anyhow::Result<B::Tensor>| drop(r.expect("kernel"));

    let table = weight(be, &[cfg.vocab_size, d], 1);
    let ids: Vec<u32> = (0..TOKENS as u32)
        .map(|i| i * 7919 % cfg.vocab_size as u32)
        .collect();
    case(&mut g, be, sync, "embed/512", true, || {
        ok(be.embed(&table, &ids))
    });
    drop(table);

    let (x, norm) = (tensor(be, TOKENS, d, 2), weight(be, &[d], 3));
    case(&mut g, be, sync, "rms_norm/512", true, || {
        ok(be.rms_norm(&x, &norm, 1e-5))
    });
    let mut residual = tensor(be, TOKENS, d, 4);
    case(&mut g, be, sync, "add_rms_norm/512", true, || {
        ok(be.add_rms_norm(&mut residual, &x, &norm, 1e-5))
    });
    let mut a = tensor(be, TOKENS, d, 5);
    case(&mut g, be, sync, "add/512", true, || {
        be.add(&mut a, &x).expect("add")
    });
    let rows: Vec<usize> = (0..ROWS).map(|i| i * 31 % TOKENS).collect();
    case(&mut g, be, sync, "gather_rows/16", true, || {
        ok(be.gather_rows(&x, &rows))
    });

    // The MLP's gate projection: decode rows stream the weight, prefill rows reuse it.
    let w = weight(be, &[ff, d], 6);
    let xr = tensor(be, ROWS, d, 7);
    case(&mut g, be, sync, "linear_gate/16", true, || {
        ok(be.linear(&xr, &w))
    });
    case(&mut g, be, sync, "linear_gate/512", false, || {
        ok(be.linear(&x, &w))
    });
    drop(w);
    if be.name() == "cpu" {
        let w = weight_f32(be, &[ff, d], 6);
        case(&mut g, be, sync, "linear_gate_f32/16", true, || {
            ok(be.linear(&xr, &w))
        });
        case(&mut g, be, sync, "linear_gate_f32/512", false, || {
            ok(be.linear(&x, &w))
        });
    }
    let gate_up = tensor(be, TOKENS, 2 * ff, 8);
    case(&mut g, be, sync, "silu_mul/512", true, || {
        ok(be.silu_mul(&gate_up))
    });
    drop(gate_up);

    let b = cases::batch(vec![cases::slice(0, TOKENS, 0, cases::pages(0, TOKENS))]);
    let mut kv = cases::alloc_kv(be, dims, TOKENS.div_ceil(cases::PAGE)).expect("kv");
    let qkv = tensor(be, TOKENS, qd + 2 * kd, 10);
    case(&mut g, be, sync, "rope_store_kv/512", true, || {
        ok(be.rope_store_kv(&qkv, &mut kv, 0, &b, dims))
    });
    drop((kv, qkv));

    let attn = cases::causal(be, dims, TOKENS).expect("case");
    case(&mut g, be, sync, "attention_causal/512", false, || {
        ok(attn.run(be, dims))
    });
    drop(attn);
    let attn = cases::paged_decode(be, dims, ROWS, CONTEXT).expect("case");
    case(&mut g, be, sync, "attention_decode/16x1024", true, || {
        ok(attn.run(be, dims))
    });
    drop(attn);
    let attn = cases::shared_prefix(be, dims, ROWS, CONTEXT, 32).expect("case");
    case(
        &mut g,
        be,
        sync,
        "attention_prefix/16x1024+32",
        true,
        || ok(attn.run(be, dims)),
    );
    drop(attn);

    let head = TalkHead::<B> {
        w1: weight(be, &[d, 2 * d], 13),
        b1: weight(be, &[d], 14),
        w2: weight(be, &[d, d], 15),
        b2: weight(be, &[d], 16),
        w3: weight(be, &[1, d], 17),
    };
    let (hb, he) = (tensor(be, ROWS, d, 18), tensor(be, ROWS, d, 19));
    case(&mut g, be, sync, "talk_mix/16", true, || {
        ok(be.talk_mix(&hb, &he, &head))
    });
    g.finish();
}

/// Host sampling (what the CPU backend runs after every step): one row of the vocabulary.
fn host_sampling(c: &mut Criterion, model: &str, cfg: &Config) {
    let logits = fill_uniform(20, cfg.vocab_size, 8.0);
    let mut g = c.benchmark_group(format!("cpu/{model}"));
    g.sample_size(10).measurement_time(measure());
    g.throughput(Throughput::BytesDecimal(4 * cfg.vocab_size as u64));
    for (name, s) in [
        ("sample_argmax/1", Sampling::GREEDY),
        (
            "sample_temperature/1",
            Sampling {
                temperature: 1.0,
                top_p: 1.0,
                top_k: 0,
            },
        ),
        (
            "sample_top_p/1",
            Sampling {
                temperature: 1.0,
                top_p: 0.9,
                top_k: 0,
            },
        ),
    ] {
        g.bench_function(name, |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                sample(&logits, cfg.vocab_size, s, (i % 997) as f64 / 997.0)
            })
        });
    }
    g.finish();
}

/// Each benchmark's measurement time: PONDER_BENCH_MEASURE_S seconds (the GPU session's
/// run.sh asks for 1 to fit its budget), else 3. A group's own setting overrides criterion's
/// --measurement-time, hence the variable.
fn measure() -> Duration {
    let s = std::env::var("PONDER_BENCH_MEASURE_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

/// Whether PONDER_BENCH_BACKENDS (default "cpu,cuda") names `backend`.
fn wanted(backend: &str) -> bool {
    std::env::var("PONDER_BENCH_BACKENDS")
        .map(|v| v.split(',').any(|b| b.trim() == backend))
        .unwrap_or(backend != "cuda-emu")
}

fn all(c: &mut Criterion) {
    if wanted("cpu") {
        let (model, cfg) = config("smollm2-135m");
        let cpu = Cpu::new();
        kernels(c, &cpu, &|| {}, &model, &cfg);
        host_sampling(c, &model, &cfg);
    }
    #[cfg(feature = "cuda")]
    {
        use ponder::backend::cuda::{gpu_available, Cuda};
        if wanted("cuda") {
            if gpu_available() {
                cuda(c, &Cuda::new(0).expect("CUDA"), "mistral-7b");
            } else {
                eprintln!("CUDA kernels skipped: no GPU");
            }
        }
        // The same benches on the CUDA emulator (opt-in): CPU times, for rehearsing this
        // code without a GPU, e.g. `PONDER_BENCH_BACKENDS=cuda-emu kernels-bench --bench --test`.
        if wanted("cuda-emu") {
            cuda(c, &Cuda::emulated().expect("CUDA emulator"), "tiny");
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda(c: &mut Criterion, be: &ponder::backend::cuda::Cuda, default_model: &str) {
    let (model, cfg) = config(default_model);
    let sync = || be.synchronize().expect("CUDA stream");
    // The kernels themselves: each bench's op on its own kernel (prefill tiles, shared
    // prefixes, cuBLAS's own choice per shape), not the batch-invariant routing that solve
    // and eval use (`ponder bench --kernels invariant` times that).
    be.set_batch_invariant(false);
    kernels(c, be, &sync, &model, &cfg);
    // Device sampling: 16 rows of the vocabulary, only the ids come back.
    let logits = tensor(be, ROWS, cfg.vocab_size, 21);
    let u: Vec<f64> = (0..ROWS).map(|i| (i as f64 + 0.5) / ROWS as f64).collect();
    let mut g = c.benchmark_group(format!("{}/{model}", be.name()));
    g.sample_size(10).measurement_time(measure());
    g.throughput(Throughput::BytesDecimal((4 * ROWS * cfg.vocab_size) as u64));
    let top_p = Sampling {
        temperature: 1.0,
        top_p: 0.9,
        top_k: 0,
    };
    g.bench_function("sample_top_p/16", |b| {
        b.iter(|| {
            be.sample(&logits, cfg.vocab_size, top_p, &u)
                .expect("sample")
        })
    });
    g.finish();
}

criterion_group!(benches, all);
criterion_main!(benches);
