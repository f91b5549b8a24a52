//! What a results folder's records depend on, kept beside them in `DIR/run.json`: the model,
//! the PRM, the backend, the data and every setting that changes an answer, a token count or
//! a FLOP. `--resume` with other values would mix two experiments in one report (and skip
//! problems of another data file whose rows happen to share an index), so it is refused;
//! `ponder report` refuses to merge folders whose runs differ the same way. Budgets (votes,
//! width) are not part of it: every record carries its own, and the report keeps them apart.
use super::data::Loaded;
use super::results::RESULTS;
use crate::rng::{fnv1a, FNV_OFFSET};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

pub const MANIFEST: &str = "run.json";

/// Fields that only describe where the run went (its timing), not what it computed: a
/// difference is reported, not refused.
const TIMING_ONLY: &[&str] = &["device"];

/// What runs from before a field was recorded had for it.
enum Before {
    /// It varied and went unrecorded: not compared where one side lacks it.
    Unrecorded,
    /// Every run had this value.
    Always(&'static str),
    /// The protocol's default (`--protocol seed`, `--protocol wu`).
    ByProtocol(&'static str, &'static str),
}

/// Fields recorded since a later version: a folder written before a field existed still
/// resumes and merges with runs that agree with what it had.
const LATER_FIELDS: &[(&str, Before)] = &[
    ("kv-pages", Before::Unrecorded),
    ("shard", Before::Unrecorded),
    ("top-k", Before::Always("0")),
    // --select and --aggregate arrived with their fields (9f4f84d); before, the protocol's rule.
    ("rebase-select", Before::ByProtocol("best", "weighted")),
    ("rebase-aggregate", Before::Always("last")),
];

/// Field name → value, in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest(pub BTreeMap<String, String>);

impl Manifest {
    /// A copy without field `key`.
    fn without(&self, key: &str) -> Manifest {
        let mut m = self.clone();
        m.0.remove(key);
        m
    }

    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.0.insert(key.to_string(), value.to_string());
        self
    }

    /// The settings line of report.md: every field but those its header shows from the
    /// records themselves (model, PRM, device, subset, seed).
    pub fn describe(&self) -> String {
        // The shard is one folder's, not the merged report's.
        const SHOWN: &[&str] = &[
            "model", "prm", "backend", "device", "subset", "seed", "shard",
        ];
        self.0
            .iter()
            .filter(|(k, _)| !SHOWN.contains(&k.as_str()))
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(" · ")
    }

    /// The first field (by name) whose value differs, with both values ("(none)" for a field
    /// one of them lacks); timing-only fields are skipped unless `timing` is set.
    fn first_difference(&self, other: &Manifest, timing: bool) -> Option<(String, String, String)> {
        let none = || "(none)".to_string();
        let keys: std::collections::BTreeSet<&String> =
            self.0.keys().chain(other.0.keys()).collect();
        keys.into_iter()
            .filter(|k| timing == TIMING_ONLY.contains(&k.as_str()))
            .find_map(|k| {
                let (mut a, mut b) = (self.0.get(k).cloned(), other.0.get(k).cloned());
                if let Some((_, before)) = LATER_FIELDS.iter().find(|(f, _)| f == k) {
                    let protocol = |m: &Manifest| m.0.get("protocol").cloned();
                    let had = |m: &Manifest| match before {
                        Before::Unrecorded => None,
                        Before::Always(v) => Some(v.to_string()),
                        Before::ByProtocol(seed, wu) => match protocol(m).as_deref() {
                            Some("wu") => Some(wu.to_string()),
                            _ => Some(seed.to_string()),
                        },
                    };
                    a = a.or_else(|| had(self));
                    b = b.or_else(|| had(other));
                    if a.is_none() || b.is_none() {
                        return None;
                    }
                }
                (a != b).then(|| {
                    let a = a.unwrap_or_else(none);
                    let b = b.unwrap_or_else(none);
                    (k.clone(), a, b)
                })
            })
    }
}

/// What follows the row count in `data_fingerprint`, where `data_rows` reads it back.
const ROWS_END: &str = " rows, ";

/// A fingerprint of the data as parsed: every row's index, question and gold answer (a
/// malformed row counts as such), FNV-1a over them, with the row count.
pub fn data_fingerprint(data: &Loaded) -> String {
    let mut h = FNV_OFFSET;
    let mut eat = |bytes: &[u8]| {
        // Then a separator no UTF-8 text contains, so field boundaries cannot shift.
        h = fnv1a(fnv1a(h, bytes), &[0xff]);
    };
    for row in &data.rows {
        match row {
            Some(p) => {
                eat(p.index.to_string().as_bytes());
                eat(p.question.as_bytes());
                eat(p.gold.as_deref().unwrap_or("").as_bytes());
            }
            None => eat(b"malformed"),
        }
    }
    format!("{}{ROWS_END}fnv1a64 {h:016x}", data.rows.len())
}

/// The manifest of `dir`, if it has one.
fn read(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    crate::input::refuse_non_regular(&path, "")?;
    match std::fs::read_to_string(&path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .with_context(|| format!("{} is not a run manifest", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write(dir: &Path, m: &Manifest) -> Result<()> {
    crate::input::create_dir(dir)?;
    let path = dir.join(MANIFEST);
    let text = serde_json::to_string_pretty(m)? + "\n";
    crate::input::refuse_non_regular(&path, "")?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Takes the results folder for this process: creates it, and holds an exclusive lock on
/// `DIR/.lock` for as long as the returned file lives (the OS drops it when the process
/// ends, however it ends). A second eval on the same folder is refused instead of
/// interleaving its records with the first one's.
pub fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    crate::input::create_dir(dir)?;
    let path = dir.join(".lock");
    // Every file the eval will read or write there, before any work: opening a pipe would
    // wait forever, and a device would never end.
    use super::report::{FLOPS_SVG, REPORT_MD, SECONDS_SVG, SUMMARY_CSV, SUMMARY_JSON};
    for name in [
        ".lock",
        MANIFEST,
        RESULTS,
        super::planned::PLANNED,
        REPORT_MD,
        SUMMARY_CSV,
        SUMMARY_JSON,
        FLOPS_SVG,
        SECONDS_SVG,
    ] {
        crate::input::refuse_non_regular(&dir.join(name), "")?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // A report asks whether the folder is being written with a shared lock held for a
    // moment: that is waited out (200 ms), an eval's lock is not.
    let mut tries = 0;
    let got = loop {
        match f.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) if tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other,
        }
    };
    match got {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another ponder process is writing results into {} (it holds {}); wait for it or \
             choose another --out",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// Whether an eval holds `dir`'s lock now (a report of the folder is then a snapshot). Only
/// asks: the lock is let go at once, and a folder without `.lock` is nobody's.
pub fn is_being_written(dir: &Path) -> bool {
    let path = dir.join(".lock");
    // Not a pipe or a device: opening one could wait forever.
    if !path.is_file() {
        return false;
    }
    let Ok(f) = std::fs::File::open(&path) else {
        return false;
    };
    matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

/// Before an eval writes into `dir`: a folder without results gets `m` as its manifest; with
/// `resume`, a folder with results must have been run with the same values (a folder from
/// before manifests existed is adopted). Without `resume` a folder with results is left as
/// it is (opening its results file refuses it). Returns the folder's manifest from now on
/// (on a resume, the recorded one).
pub fn check_or_write(dir: &Path, m: &Manifest, resume: bool) -> Result<Manifest> {
    let has_results = super::results::holds_results(dir);
    if !has_results {
        write(dir, m)?;
        return Ok(m.clone());
    }
    if !resume {
        return Ok(m.clone());
    }
    let Some(old) = read(dir)? else {
        // Its records name their model, seed and subset, not the token limits, votes or
        // data they were run with: adopting them would mix two runs in one report.
        bail!("{}", without_manifest(dir));
    };
    if let Some((k, was, now)) = old.first_difference(m, false) {
        bail!(
            "{} holds results of another run: {k} was {was}, now {now} (resume with the same \
             settings, or choose another --out)",
            dir.display()
        );
    }
    if let Some((k, was, now)) = old.first_difference(m, true) {
        eprintln!(
            "ponder: resuming {} on another machine: {k} was {was}, now {now} (its seconds per \
             problem mix the two)",
            dir.display()
        );
    }
    Ok(old)
}

/// The data's row count as `data_fingerprint` recorded it ("N rows, ..."), when it did.
pub fn data_rows(m: &Manifest) -> Option<usize> {
    m.0.get("data")?.split_once(ROWS_END)?.0.parse().ok()
}

/// Before a report: a record of a row the run's data does not have (run.json gives the row
/// count) did not come from that run, e.g. a line pasted from another data file's results.
pub fn check_indices(m: &Manifest, records: &[super::record::Record]) -> Result<()> {
    let Some(rows) = data_rows(m) else {
        return Ok(());
    };
    if let Some(r) = records.iter().find(|r| r.index >= rows) {
        bail!(
            "a {} record names row {}, but the run's data has {rows} rows (run.json): the \
             results file holds lines of another run",
            r.method,
            r.index
        );
    }
    Ok(())
}

/// Before merging folders: every folder with a manifest must agree with the first such one,
/// which is returned (None when no folder has one).
/// The error for a folder that holds results but no run.json (deleted, or never copied with
/// them).
fn without_manifest(dir: &Path) -> String {
    format!(
        "{} holds results but no {MANIFEST}, so the settings they were run with cannot be \
         checked: restore {MANIFEST} beside them (or run afresh into an empty folder)",
        dir.display()
    )
}

/// Merging folders: refuses folders of different runs; returns the first folder's manifest
/// and the notes to print once every other check has passed too (different machines, shards
/// not among the folders).
pub fn check_same_run(dirs: &[&Path]) -> Result<(Option<Manifest>, Vec<String>)> {
    let mut notes = Vec::new();
    let mut seen: Vec<Manifest> = Vec::new();
    // The distinct manifests less what may differ between folders of one run (the shard,
    // the device), each with its first folder: a job array's thousands of folders usually
    // have one, so the pairwise check below stays linear.
    let mut distinct: Vec<(&Path, Manifest)> = Vec::new();
    // Device → its folders, for the note on machines.
    let mut devices: BTreeMap<String, Vec<&Path>> = BTreeMap::new();
    let mut empty = 0;
    for &d in dirs {
        let Some(m) = read(d)? else {
            // An empty shard's folder holds nothing, not even run.json.
            if super::results::holds_results(d) {
                bail!("{}", without_manifest(d));
            }
            empty += 1;
            continue;
        };
        let key = m.without("shard").without("device");
        // Every pair of distinct ones, not each against the first: a folder from before a
        // field was recorded agrees with any value of it, so two later folders must still
        // meet each other. A folder equal to one already checked agrees with all it did.
        if !distinct.iter().any(|(_, k)| *k == key) {
            for (d0, k0) in &distinct {
                if let Some((k, a, b)) = k0.first_difference(&key, false) {
                    bail!(
                        "result directories {} and {} come from different runs: {k} is {a} \
                         in one and {b} in the other",
                        d0.display(),
                        d.display()
                    );
                }
            }
            distinct.push((d, key));
        }
        let device =
            m.0.get("device")
                .cloned()
                .unwrap_or_else(|| "(unrecorded)".into());
        devices.entry(device).or_default().push(d);
        seen.push(m);
    }
    // Shards run on different machines merge (what they computed is the same), but their
    // seconds per problem are then an average over the machines: said once, per machine.
    if devices.len() > 1 {
        let each: Vec<String> = devices
            .iter()
            .map(|(dev, ds)| match ds.len() {
                1 => format!("{dev} ({})", ds[0].display()),
                n => format!("{dev} ({n} folders, the first {})", ds[0].display()),
            })
            .collect();
        notes.push(format!(
            "the folders ran on {} different machines: {}; the report's seconds per problem mix \
             them",
            devices.len(),
            each.join("; ")
        ));
    }
    let ms: Vec<&Manifest> = seen.iter().collect();
    notes.extend(missing_shards(&ms, empty));
    Ok((seen.into_iter().next(), notes))
}

/// Merging the shards of a job array: which shards are not among the folders (a report of
/// part of the problems reads like one of all of them otherwise). `empty` folders (a shard
/// with nothing to run keeps no run.json) may be any of them: as many missing shards as
/// those say nothing. So do folders from before the shard was recorded, and runs without
/// shards.
fn missing_shards(ms: &[&Manifest], empty: usize) -> Option<String> {
    if ms.iter().any(|m| !m.0.contains_key("shard")) {
        return None;
    }
    let shards: Vec<(usize, usize)> = ms
        .iter()
        .filter_map(|m| super::data::parse_shard(&m.0["shard"]).ok())
        .collect();
    let &(_, n) = shards.first()?;
    if shards.iter().any(|&(_, k)| k != n) {
        return Some("the folders are shards of different splits (i/n with different n)".into());
    }
    let present: std::collections::BTreeSet<usize> = shards.iter().map(|&(i, _)| i).collect();
    let n_missing = n - present.len();
    // The first ten by name, then how many more.
    let mut missing: Vec<String> = (0..n)
        .filter(|i| !present.contains(i))
        .take(10)
        .map(|i| format!("{i}/{n}"))
        .collect();
    if n_missing > missing.len() {
        missing.push(format!("and {} more", n_missing - missing.len()));
    }
    (n_missing > empty).then(|| {
        let with = if empty > 0 {
            format!(" with results ({empty} folder(s) hold none)")
        } else {
            String::new()
        };
        format!(
            "shard(s) {} are not among the folders{with}: the report covers part of the \
             selected problems",
            missing.join(", ")
        )
    })
}

#[cfg(test)]
mod tests;
