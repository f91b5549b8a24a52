use super::*;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    opts: Opts,
}

fn settings(args: &[&str]) -> Settings {
    let cli = Cli::try_parse_from(std::iter::once("ponder").chain(args.iter().copied()))
        .expect("flags parse");
    cli.opts.settings().expect("valid settings")
}

/// votes, width, max_tokens, step_tokens, path_tokens.
fn sizes(s: &Settings) -> (usize, usize, usize, usize, usize) {
    (s.votes, s.width, s.max_tokens, s.step_tokens, s.path_tokens)
}

#[test]
fn quick_changes_defaults_and_explicit_sizes_win() {
    let full = settings(&[]);
    assert_eq!(sizes(&full), (6, 6, 384, 96, 384));
    assert_eq!(settings(&["--protocol", "wu"]).step_tokens, 256);
    let quick = settings(&["--quick"]);
    assert_eq!(sizes(&quick), (2, 2, 48, 48, 96));
    let mixed = settings(&["--quick", "--votes", "4", "--step-tokens", "32"]);
    assert_eq!(sizes(&mixed), (4, 2, 48, 32, 96));
    let err = Cli::try_parse_from(["ponder", "--quick", "--width", "0"])
        .expect("flags parse")
        .opts
        .settings()
        .expect_err("width 0 is refused");
    assert!(err.to_string().contains("--width"), "{err}");
}

#[test]
fn rebase_answer_rule_defaults_to_the_protocols() {
    assert_eq!(settings(&[]).select(), Select::Best);
    assert_eq!(settings(&["--protocol", "wu"]).select(), Select::Weighted);
    let s = settings(&["--protocol", "wu", "--select", "best", "--aggregate", "min"]);
    assert_eq!((s.select(), s.aggregate), (Select::Best, Aggregate::Min));
    assert_eq!(settings(&[]).aggregate, Aggregate::Last);
    assert!(Cli::try_parse_from(["ponder", "--select", "vote"]).is_err());
}

#[test]
fn n_ahead_outside_what_a_thought_can_hold_is_refused_before_loading() {
    for (n, ok) in [(3, false), (4, true), (8, true), (67, true), (68, false)] {
        let r = Cli::try_parse_from(["ponder", "--n-ahead", &n.to_string()])
            .expect("flags parse")
            .opts
            .settings();
        assert_eq!(r.is_ok(), ok, "--n-ahead {n}");
        if let Err(e) = r {
            assert!(e.to_string().contains("outside 4..=67"), "{e}");
        }
    }
}
