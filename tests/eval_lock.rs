//! One results folder, one writer: an eval holds `DIR/.lock` while it runs, and a second eval
//! on the same folder is refused instead of interleaving its records with the first's.
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ponder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ponder"))
}

#[test]
fn a_second_eval_on_the_same_folder_is_refused() {
    let dir = std::env::temp_dir().join(format!("ponder-test-locked-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let args = [
        "eval",
        "--model",
        "synthetic:tiny",
        "--method",
        "baseline",
        "--votes",
        "1",
        "--max-tokens",
        "3000",
        "--answer-tokens",
        "2",
        "--fixed-lengths",
    ];
    let mut first = ponder()
        .args(args)
        .arg("--out")
        .arg(&dir)
        .stderr(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The first run holds the folder once its manifest is written.
    let t = Instant::now();
    while !dir.join("run.json").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the first run never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = ponder()
        .args(args)
        .args(["--resume", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let still_running = first.try_wait().unwrap().is_none();
    first.kill().unwrap();
    let _ = first.wait();
    assert!(
        still_running,
        "the first run ended before the second could meet it"
    );
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another ponder process is writing results into"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
