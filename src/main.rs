//! The `ponder` command line: thin, everything lives in the library.
mod cli;

use clap::error::ErrorKind;
use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = match cli::Cli::try_parse() {
        Ok(a) => a,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // One line: clap's first line names the flag and the bad value.
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad arguments");
            eprintln!("{first}");
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
