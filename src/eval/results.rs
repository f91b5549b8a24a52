//! Durable results: each finished problem is appended to `DIR/results.jsonl` as one line and
//! fsynced at once, so a run killed at any moment loses at most the problems in flight.
//! Resuming reads what is there; a torn last line (the kill hit mid-write) is cut away.
use super::record::Record;
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct ResultsFile {
    path: PathBuf,
    file: File,
}

pub const RESULTS: &str = "results.jsonl";

/// Reads every complete record of `dir/results.jsonl`. Returns the records and the byte length
/// of the intact part (everything up to the last newline that ends a valid record).
pub fn read_records(dir: &Path) -> Result<(Vec<Record>, u64)> {
    let path = dir.join(RESULTS);
    let text = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut out = Vec::new();
    // The line of each (method, budget, index): a problem has one record, or the report would
    // count it twice.
    let mut seen = std::collections::HashMap::new();
    let mut good = 0u64;
    let mut start = 0usize;
    let mut line_no = 0;
    while start < text.len() {
        line_no += 1;
        let Some(nl) = text[start..].iter().position(|&b| b == b'\n') else {
            break; // no newline: a torn last line
        };
        let line = &text[start..start + nl];
        if !line.iter().all(|b| b.is_ascii_whitespace()) {
            let rec: Record = std::str::from_utf8(line)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .and_then(|s| serde_json::from_str(s).map_err(|e| anyhow::anyhow!("{e}")))
                .with_context(|| {
                    format!("{} line {line_no} is not a result record", path.display())
                })?;
            if let Some(first) = seen.insert(rec.key(), line_no) {
                bail!(
                    "{} line {line_no} repeats the result of line {first} (method {}, budget {}, \
                     index {}): a results file holds one record per problem",
                    path.display(),
                    rec.method,
                    rec.budget,
                    rec.index
                );
            }
            out.push(rec);
        }
        start += nl + 1;
        good = start as u64;
    }
    Ok((out, good))
}

impl ResultsFile {
    /// Opens `dir/results.jsonl` for appending. Without `resume` an existing non-empty file is
    /// refused (results are never overwritten); with it, the records already there are returned.
    pub fn open(dir: &Path, resume: bool) -> Result<(Self, Vec<Record>)> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(RESULTS);
        let (records, good) = read_records(dir)?;
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len > 0 && !resume {
            bail!(
                "{} already holds results: pass --resume to continue it, or choose another --out",
                path.display()
            );
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if good < len {
            eprintln!(
                "ponder: dropping a torn last line of {} ({} bytes)",
                path.display(),
                len - good
            );
            file.set_len(good)
                .with_context(|| format!("cannot truncate {}", path.display()))?;
        }
        Ok((ResultsFile { path, file }, records))
    }

    /// Appends one record and makes it durable before returning.
    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}
