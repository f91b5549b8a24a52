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
            eprintln!("error: {}", one_line(&format!("{e:#}")));
            // For developers: the error's chain and, with RUST_LIB_BACKTRACE=1, where it began.
            if std::env::var_os("PONDER_DEBUG").is_some() {
                eprintln!("{e:?}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The message for a command line with an argument that is not UTF-8: which flag's value (or
/// which argument) it is, shown lossily. Path flags take any bytes, so clap refused another
/// one; when that leaves no single candidate, the message says so.
fn not_utf8(args: &[std::ffi::OsString]) -> String {
    use std::os::unix::ffi::OsStrExt;
    const PATHS: [&str; 4] = ["--out", "--data", "--prompt-file", "--cache-dir"];
    // (index, the flag it is the value of, its value)
    let culprits: Vec<(usize, Option<String>, String)> = args
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(_, a)| a.to_str().is_none())
        .filter_map(|(i, a)| {
            let bytes = a.as_bytes();
            let (flag, value) = match bytes.iter().position(|&b| b == b'=') {
                Some(eq) if bytes.starts_with(b"--") => (
                    Some(String::from_utf8_lossy(&bytes[..eq]).into_owned()),
                    String::from_utf8_lossy(&bytes[eq + 1..]).into_owned(),
                ),
                _ => (
                    args[i - 1]
                        .to_str()
                        .filter(|f| i > 1 && f.starts_with("--"))
                        .map(String::from),
                    a.to_string_lossy().into_owned(),
                ),
            };
            let path = flag.as_deref().is_some_and(|f| PATHS.contains(&f));
            (!path).then_some((i, flag, value))
        })
        .collect();
    match &culprits[..] {
        [(_, Some(flag), value)] => {
            format!("the value of {flag} is not valid UTF-8 ({value}): ponder takes UTF-8 text")
        }
        [(i, None, value)] => {
            format!("argument {i} is not valid UTF-8 ({value}): ponder takes UTF-8 text")
        }
        _ => "an argument is not valid UTF-8: ponder takes UTF-8 text (paths excepted)".into(),
    }
}

/// An error as one line a terminal shows as written: line breaks become spaces; other
/// control characters and bidirectional overrides (from file contents: a tensor name, a
/// config value) are escaped; past 2000 characters the middle is left out, keeping the
/// start (what failed) and the end (why).
fn one_line(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for c in msg.chars() {
        match c {
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control()
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') =>
            {
                out.extend(c.escape_unicode())
            }
            c => out.push(c),
        }
    }
    let n = out.chars().count();
    if n <= 2000 {
        return out;
    }
    let head: String = out.chars().take(1200).collect();
    let tail: String = out.chars().skip(n - 600).collect();
    format!("{head} … ({} characters left out) … {tail}", n - 1800)
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_print_as_one_plain_line() {
        assert_eq!(
            super::one_line("tensor model.x\r\ny\u{1b}[31m\u{202e}: bad"),
            "tensor model.x  y\\u{1b}[31m\\u{202e}: bad"
        );
        let long = format!("start {} end", "x".repeat(10_000));
        let short = super::one_line(&long);
        assert!(short.starts_with("start xx") && short.ends_with("xx end"));
        assert!(short.contains("(8210 characters left out)"), "{short}");
        assert_eq!(super::one_line("fine"), "fine");
    }
}
