//! ponder: an inference engine that measures what it costs a language model to reason.
pub mod account;
pub mod backend;
pub mod batcher;
pub mod bench_cases;
pub mod eval;
pub mod flops;
pub mod generate;
pub mod guard;
pub mod input;
pub mod kv;
pub mod methods;
pub mod model;
pub mod rng;
pub mod sample;
pub mod scheduler;
pub mod split;
pub mod stop;
