//! Models: config, weights, GGUF import, tokenizer, the llama/mistral forward pass.
pub mod config;
pub mod gguf;
pub mod import;
pub mod llama;
pub mod source;
pub mod tokenizer;
pub mod tokenizer_file;
pub mod weights;
