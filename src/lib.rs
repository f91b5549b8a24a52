//! ponder: an inference engine that measures what it costs a language model to reason.
pub mod kv;
