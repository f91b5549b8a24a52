//! Models: config, weights, GGUF import, tokenizer, the llama/mistral forward pass.
pub mod config;
pub mod gguf;
pub mod import;
pub mod llama;
pub mod source;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

/// Refuses a path that exists but is no regular file (a directory, a pipe, a device): reading
/// it would fail obscurely, and opening a pipe would block. `hint` follows the message.
/// A missing path passes: its reader names it.
pub(crate) fn refuse_non_regular(path: &Path, hint: &str) -> anyhow::Result<()> {
    if path.exists() && !path.is_file() {
        anyhow::bail!("{} is not a regular file{hint}", path.display());
    }
    Ok(())
}
