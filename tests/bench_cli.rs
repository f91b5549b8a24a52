//! `ponder bench …` on tiny shapes: every case prints a row with positive, finite numbers,
//! and bad sizes are one-line errors.
use std::process::Command;

fn ponder(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ponder"))
        .args(args)
        .env(
            "PONDER_CACHE",
            std::env::temp_dir().join("ponder-bench-cli-cache"),
        )
        .output()
        .expect("run ponder");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The numbers of the table row that starts with `case`.
fn row(out: &str, case: &str) -> Vec<f64> {
    let line = out
        .lines()
        .find(|l| l.starts_with(case))
        .unwrap_or_else(|| panic!("no {case} row in:\n{out}"));
    line.split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .collect()
}

#[test]
fn attention_cases_all_report() {
    let (code, out, err) = ponder(&[
        "bench",
        "attention",
        "--model",
        "synthetic:tiny",
        "--device",
        "cpu",
        "--tokens",
        "48",
        "--batch",
        "3",
        "--context",
        "40",
        "--iters",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    for case in ["causal", "paged-decode", "shared-prefix"] {
        let nums = row(&out, case);
        // shape numbers, then ms, TFLOP/s, GB/s
        let [ms, tf, gbs] = nums[nums.len() - 3..] else {
            panic!("{case}: {nums:?}")
        };
        assert!(ms > 0.0 && ms.is_finite(), "{case}: {out}");
        assert!(tf >= 0.0 && gbs > 0.0, "{case}: {out}");
    }
    assert!(out.contains("diagonal-mask"), "{out}");
    assert!(out.contains("40 keys"), "{out}");
}

#[test]
fn attention_zero_size_is_an_error() {
    let (code, _, err) = ponder(&[
        "bench",
        "attention",
        "--model",
        "synthetic:tiny",
        "--device",
        "cpu",
        "--iters",
        "0",
    ]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--iters"), "{err}");
}

#[test]
fn decode_and_prefill_report() {
    let (code, out, err) = ponder(&[
        "bench",
        "decode",
        "--model",
        "synthetic:tiny",
        "--device",
        "cpu",
        "--batch",
        "1,4",
        "--context",
        "32",
        "--steps",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with(['1', '4']))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    let (code, out, err) = ponder(&[
        "bench",
        "prefill",
        "--model",
        "synthetic:tiny",
        "--device",
        "cpu",
        "--tokens",
        "64",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("prefill of 64 tokens"), "{out}");
}
