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
    /// Bytes of whole records: where a failed append is cut back to.
    len: u64,
    /// A failed append could not be cut back: nothing more may be appended after its bytes.
    poisoned: bool,
}

pub const RESULTS: &str = "results.jsonl";

/// What `read_records` found in a results file (all empty for a file that is not there).
#[derive(Default)]
pub struct Read {
    pub records: Vec<Record>,
    /// Bytes of the intact part: every line up to the last complete record.
    pub good: u64,
    /// The last record is complete but its newline is missing (a kill between the two
    /// writes' bytes reaching the disk): it counts, and an append must add the newline first.
    pub unterminated: bool,
    /// Bytes past `good` that are no record (a kill mid-write): never counted.
    pub torn: u64,
}

/// Reads every complete record of `dir/results.jsonl`.
pub fn read_records(dir: &Path) -> Result<Read> {
    let path = dir.join(RESULTS);
    // ponder writes a regular file there: a pipe would block, a device never end.
    crate::input::refuse_non_regular(&path, "")?;
    let text = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut out = Vec::new();
    // The line of each (method, budget, index): a problem has one record, or the report would
    // count it twice.
    let mut seen = std::collections::HashMap::new();
    let mut good = 0u64;
    let mut unterminated = false;
    let mut start = 0usize;
    let mut line_no = 0;
    let parse = |line: &[u8]| -> Result<Record> {
        std::str::from_utf8(line)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|s| serde_json::from_str(s).map_err(|e| anyhow::anyhow!("{e}")))
    };
    while start < text.len() {
        line_no += 1;
        let (line, next) = match text[start..].iter().position(|&b| b == b'\n') {
            Some(nl) => (&text[start..start + nl], start + nl + 1),
            // No newline: a whole record still counts; anything else is a torn write.
            None => match parse(&text[start..]) {
                Ok(_) => {
                    unterminated = true;
                    (&text[start..], text.len())
                }
                Err(_) => break,
            },
        };
        if !line.iter().all(|b| b.is_ascii_whitespace()) {
            let rec: Record = parse(line)
                .and_then(|r| r.check().map(|_| r))
                .with_context(|| {
                    format!(
                        "{} line {line_no} is not a result record (delete that line, and \
                         `--resume` reruns its problem)",
                        path.display()
                    )
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
        start = next;
        good = start as u64;
    }
    Ok(Read {
        records: out,
        good,
        unterminated,
        torn: text.len() as u64 - good,
    })
}

/// Whether `dir`'s results file holds anything but whitespace: a file of blank lines holds no
/// results (a folder with one is a fresh folder, not one to resume).
pub fn holds_results(dir: &Path) -> bool {
    std::fs::read(dir.join(RESULTS)).is_ok_and(|b| b.iter().any(|c| !c.is_ascii_whitespace()))
}

impl ResultsFile {
    /// The folder the file is in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Opens `dir/results.jsonl` for appending. Without `resume` an existing non-empty file is
    /// refused (results are never overwritten); with it, the records already there are returned.
    pub fn open(dir: &Path, resume: bool) -> Result<(Self, Vec<Record>)> {
        crate::input::create_dir(dir)?;
        let path = dir.join(RESULTS);
        let read = read_records(dir)?;
        // The intact part and the torn tail together are the whole file as read.
        if read.good + read.torn > 0 && holds_results(dir) && !resume {
            bail!(
                "{} already holds results: pass --resume to continue it, or choose another --out",
                path.display()
            );
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if read.torn > 0 {
            eprintln!(
                "ponder: dropping a torn last line of {} ({} bytes)",
                path.display(),
                read.torn
            );
            file.set_len(read.good)
                .with_context(|| format!("cannot truncate {}", path.display()))?;
        }
        let mut len = read.good;
        if read.unterminated {
            file.write_all(b"\n")
                .and_then(|_| file.sync_data())
                .with_context(|| format!("cannot write {}", path.display()))?;
            len += 1;
        }
        let rf = ResultsFile {
            path,
            file,
            len,
            poisoned: false,
        };
        Ok((rf, read.records))
    }

    /// Appends one record and makes it durable before returning. A failed write (a full
    /// disk, a file-size limit) may have left part of the line behind: the file is cut back
    /// to its whole records, so that a later append (a result still in flight) does not glue
    /// itself onto that part and make every record after it unreadable.
    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r)?;
        line.push('\n');
        if self.poisoned {
            bail!(
                "not writing to {} after a failed write that could not be undone",
                self.path.display()
            );
        }
        let wrote = self
            .file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data());
        if let Err(e) = wrote {
            let cut = self
                .file
                .set_len(self.len)
                .and_then(|_| self.file.sync_data());
            self.poisoned = cut.is_err();
            return Err(e).with_context(|| format!("cannot write {}", self.path.display()));
        }
        self.len += line.len() as u64;
        Ok(())
    }
}
