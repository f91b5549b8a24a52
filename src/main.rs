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
        Err(e) if e.kind() == ErrorKind::InvalidUtf8 => {
            // clap says only "in one or more arguments": name the flag whose value it is.
            eprintln!(
                "error: {}",
                not_utf8(&std::env::args_os().collect::<Vec<_>>())
            );
            return ExitCode::from(2);
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

/// The message for a command line with an argument that is not UTF-8: which flag's value (or
/// which argument) it is, shown lossily.
fn not_utf8(args: &[std::ffi::OsString]) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Some(i) = args.iter().position(|a| a.to_str().is_none()) else {
        return "an argument is not valid UTF-8".into();
    };
    let bytes = args[i].as_bytes();
    let what = if bytes.starts_with(b"--") && bytes.contains(&b'=') {
        let flag = &bytes[..bytes.iter().position(|&b| b == b'=').unwrap_or(0)];
        format!("the value of {}", String::from_utf8_lossy(flag))
    } else {
        match args.get(i.wrapping_sub(1)).and_then(|p| p.to_str()) {
            Some(flag) if i > 1 && flag.starts_with("--") => format!("the value of {flag}"),
            _ => format!("argument {i}"),
        }
    };
    format!(
        "{what} is not valid UTF-8 ({}): ponder takes UTF-8 paths and text",
        args[i].to_string_lossy()
    )
}
