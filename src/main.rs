//! The `ponder` command line: thin, everything lives in the library.
mod cli;

use clap::error::ErrorKind;
use clap::{Command, CommandFactory, FromArgMatches};
use std::process::ExitCode;

/// Lets every subcommand's flags take a value that starts with '-', so that
/// `--temperature -1` or `--votes -2` is refused by the flag's own check, naming the flag,
/// rather than read as an unknown short option "-1".
fn negatives_are_values(cmd: Command) -> Command {
    cmd.allow_negative_numbers(true)
        .mut_subcommands(negatives_are_values)
}

fn parse() -> Result<cli::Cli, clap::Error> {
    let matches = negatives_are_values(cli::Cli::command()).try_get_matches()?;
    cli::Cli::from_arg_matches(&matches)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprintln!("error: no subcommand given (`--help` lists them)");
            return ExitCode::from(2);
        }
        Err(e) => {
            // One line: clap's first paragraph names the flag and the bad value (a missing
            // argument's name is on the lines below its first).
            let text = e.render().to_string();
            let para: Vec<&str> = text
                .lines()
                .skip_while(|l| l.trim().is_empty())
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = if para.is_empty() {
                "error: bad arguments".to_string()
            } else {
                para.join(" ")
            };
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            // For developers: the error's chain and, with RUST_LIB_BACKTRACE=1, where it began.
            if std::env::var_os("PONDER_DEBUG").is_some() {
                eprintln!("{e:?}");
            }
            ExitCode::FAILURE
        }
    }
}
