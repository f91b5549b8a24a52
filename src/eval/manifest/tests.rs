use super::*;

fn manifest(seed: u64, device: &str) -> Manifest {
    let mut m = Manifest::default();
    m.set("seed", seed).set("device", device).set("model", "x");
    m
}

#[test]
fn differences_are_found_by_kind() {
    let a = manifest(1, "cpu: 2 threads");
    assert_eq!(a.first_difference(&a.clone(), false), None);
    let b = manifest(2, "cpu: 16 threads");
    assert_eq!(
        a.first_difference(&b, false),
        Some(("seed".into(), "1".into(), "2".into()))
    );
    assert_eq!(
        a.first_difference(&b, true).map(|d| d.0),
        Some("device".into())
    );
    let mut c = a.clone();
    c.set("prm", "p");
    assert_eq!(
        a.first_difference(&c, false),
        Some(("prm".into(), "(none)".into(), "p".into()))
    );
}

#[test]
fn a_field_recorded_later_is_compared_with_what_older_runs_had() {
    let old = manifest(1, "cpu");
    let mut now = old.clone();
    now.set("kv-pages", 4096).set("top-k", 0);
    // kv-pages went unrecorded (it varied), top-k was always off.
    assert_eq!(old.first_difference(&now, false), None);
    assert_eq!(now.first_difference(&old, false), None);
    now.set("top-k", 50);
    assert_eq!(
        old.first_difference(&now, false),
        Some(("top-k".into(), "0".into(), "50".into()))
    );
    let mut other = now.clone();
    other.set("kv-pages", 12).set("top-k", 50);
    assert_eq!(
        now.first_difference(&other, false),
        Some(("kv-pages".into(), "4096".into(), "12".into()))
    );
    // The answer rule before --select existed was the protocol's.
    let mut wu = old.clone();
    wu.set("protocol", "wu");
    let mut wu_now = wu.clone();
    wu_now
        .set("rebase-select", "weighted")
        .set("rebase-aggregate", "last");
    assert_eq!(wu.first_difference(&wu_now, false), None);
    wu_now.set("rebase-select", "best");
    assert_eq!(
        wu.first_difference(&wu_now, false),
        Some(("rebase-select".into(), "weighted".into(), "best".into()))
    );
    let mut seed_now = old.clone();
    seed_now
        .set("protocol", "seed")
        .set("rebase-select", "best");
    let mut seed_old = old.clone();
    seed_old.set("protocol", "seed");
    assert_eq!(seed_old.first_difference(&seed_now, false), None);
}

#[test]
fn folders_merge_only_when_every_pair_agrees() {
    let root = std::env::temp_dir().join(format!("ponder-merge-{}", std::process::id()));
    let dir = |name: &str, kv: Option<u32>| {
        let d = root.join(name);
        let mut m = manifest(1, "cpu");
        if let Some(kv) = kv {
            m.set("kv-pages", kv);
        }
        write(&d, &m).unwrap();
        d
    };
    // An old folder (no kv-pages) first accepts either pool; the two others still differ.
    let (a, b, c) = (dir("a", None), dir("b", Some(64)), dir("c", Some(32)));
    for order in [[&a, &b, &c], [&b, &c, &a], [&a, &c, &b]] {
        let dirs: Vec<&Path> = order.iter().map(|d| d.as_path()).collect();
        let e = check_same_run(&dirs).unwrap_err().to_string();
        assert!(e.contains("kv-pages is"), "{e}");
    }
    assert!(check_same_run(&[a.as_path(), b.as_path()]).is_ok());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn shards_merge_and_missing_ones_are_named() {
    let shard = |s: &str| {
        let mut m = manifest(1, "cpu");
        m.set("shard", s);
        m
    };
    let (a, b, c) = (shard("0/3"), shard("2/3"), shard("1/3"));
    assert_eq!(
        a.without("shard")
            .first_difference(&b.without("shard"), false),
        None
    );
    // A resume must keep its shard.
    assert!(a.first_difference(&b, false).is_some());
    let w = missing_shards(&[&a, &b], 0).unwrap();
    assert!(w.contains("shard(s) 1/3 are not among the folders:"), "{w}");
    assert_eq!(missing_shards(&[&a, &b, &c], 0), None);
    // An empty shard's folder (no run.json) may be the missing one; two missing are one
    // too many.
    assert_eq!(missing_shards(&[&a, &b], 1), None);
    let w = missing_shards(&[&a], 1).unwrap();
    assert!(
        w.contains("1/3, 2/3 are not among the folders with results"),
        "{w}"
    );
    assert!(missing_shards(&[&a, &shard("1/2")], 0)
        .unwrap()
        .contains("different splits"));
    assert_eq!(
        missing_shards(&[&shard("(none)"), &shard("(none)")], 0),
        None
    );
    // Of many missing shards the first ten are named, then how many more.
    let w = missing_shards(&[&shard("3/65536")], 0).unwrap();
    assert!(
        w.contains("shard(s) 0/65536, 1/65536, 2/65536, 4/65536, ")
            && w.contains("10/65536, and 65525 more are not among"),
        "{w}"
    );
    // A folder from before the field: nothing is said.
    assert_eq!(missing_shards(&[&a, &manifest(1, "cpu")], 0), None);
}

#[test]
fn the_report_line_leaves_out_what_the_header_shows() {
    let mut m = manifest(1, "cpu");
    m.set("max-tokens", 48).set("protocol", "seed");
    assert_eq!(m.describe(), "max-tokens 48 · protocol seed");
}

#[test]
fn resume_refuses_another_run_and_a_folder_without_its_settings() {
    let dir = std::env::temp_dir().join(format!("ponder-manifest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let a = manifest(1, "cpu: 2 threads");
    check_or_write(&dir, &a, false).unwrap();
    std::fs::write(dir.join(RESULTS), "{}\n").unwrap();
    // Same run, other machine: allowed. Other seed: refused, naming the field.
    let kept = check_or_write(&dir, &manifest(1, "cpu: 4 threads"), true).unwrap();
    assert_eq!(kept, a, "a resume keeps the recorded manifest");
    let e = check_or_write(&dir, &manifest(3, "cpu: 2 threads"), true).unwrap_err();
    assert!(e.to_string().contains("seed was 1, now 3"), "{e}");
    // Without --resume the folder is not touched (the results file refuses it).
    check_or_write(&dir, &manifest(3, "x"), false).unwrap();
    assert_eq!(read(&dir).unwrap(), Some(a.clone()));
    let other = dir.join("other");
    check_or_write(&other, &a, false).unwrap();
    assert_eq!(check_same_run(&[&other]).unwrap().0, Some(a.clone()));
    let third = dir.join("third");
    check_or_write(&third, &manifest(3, "x"), false).unwrap();
    let e = check_same_run(&[&third, &other]).unwrap_err().to_string();
    assert!(e.contains("seed is 3 in one and 1 in the other"), "{e}");
    // Results without run.json: nothing says what they were run with, so neither a
    // resume nor a merge takes them, and the folder is left as it was.
    std::fs::remove_file(dir.join(MANIFEST)).unwrap();
    let e = check_or_write(&dir, &a, true).unwrap_err().to_string();
    assert!(e.contains("holds results but no run.json"), "{e}");
    assert_eq!(read(&dir).unwrap(), None, "a refused folder is not adopted");
    let e = check_same_run(&[&other, &dir]).unwrap_err().to_string();
    assert!(e.contains("holds results but no run.json"), "{e}");
    // An empty shard's folder (no run.json, no results) merges as adding nothing.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_eq!(
        check_same_run(&[&empty, &other]).unwrap().0,
        Some(a.clone())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Folders on several machines get one note, per machine, however many folders each ran;
/// 3000 shards of one run merge with a check per distinct manifest, not per pair (pairwise,
/// 2638 folders took 21 s).
#[test]
fn machines_are_noted_once_and_many_shards_merge_in_linear_time() {
    let root = std::env::temp_dir().join(format!("ponder-machines-{}", std::process::id()));
    let n = 3000;
    let dirs: Vec<std::path::PathBuf> = (0..n)
        .map(|i| {
            let d = root.join(format!("s{i}"));
            let mut m = manifest(
                1,
                if i % 2 == 0 {
                    "cpu: 2 threads"
                } else {
                    "cuda: H100"
                },
            );
            m.set("shard", format!("{i}/{n}"));
            write(&d, &m).unwrap();
            d
        })
        .collect();
    let paths: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
    let t = std::time::Instant::now();
    let (m, notes) = check_same_run(&paths).unwrap();
    assert!(t.elapsed().as_secs_f64() < 5.0, "{:?}", t.elapsed());
    assert_eq!(m.unwrap().0["shard"], format!("0/{n}"));
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("2 different machines")
            && notes[0].contains("cpu: 2 threads (1500 folders, the first ")
            && notes[0].contains("cuda: H100 (1500 folders"),
        "{notes:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// A report's brief look (a shared lock on `.lock`) does not turn an eval away; an eval's
/// lock does, and the look sees it.
#[test]
fn a_reports_look_is_waited_out_and_an_evals_lock_is_not() {
    let dir = std::env::temp_dir().join(format!("ponder-lock-{}", std::process::id()));
    let held = lock_dir(&dir).unwrap();
    assert!(is_being_written(&dir));
    assert!(lock_dir(&dir).is_err(), "a second eval is refused");
    drop(held);
    assert!(!is_being_written(&dir));
    let look = std::fs::File::open(dir.join(".lock")).unwrap();
    look.lock_shared().unwrap();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(60));
        drop(look);
    });
    assert!(lock_dir(&dir).is_ok(), "the look ends within the wait");
    t.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
