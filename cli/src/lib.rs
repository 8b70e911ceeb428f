//! The start and end of every mesoblk binary (`mesoblk-master`, `mesoblk-agent`,
//! `mesoblk-target`, the benchmarks), done one way: bad flags are one line of error and exit
//! status 2, logs go to stderr through `tracing` filtered by `RUST_LOG`, and a failure is one
//! line naming the error and its causes, with exit status 1.

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::Parser;

/// Parses the command line. `--help` and `--version` print and give `Err(success)`; bad flags
/// print one line, `<name>: <what is wrong> (try --help)`, and give `Err(2)`.
pub fn parse<F: Parser>(name: &str) -> Result<F, ExitCode> {
    parse_from(name, std::env::args_os())
}

/// [`parse`] on the given arguments (the first is the program's name).
pub fn parse_from<F, I, T>(name: &str, args: I) -> Result<F, ExitCode>
where
    F: Parser,
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match F::try_parse_from(args) {
        Ok(flags) => Ok(flags),
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{name}: {} (try --help)", flag_error_line(&e));
            Err(ExitCode::from(2))
        }
    }
}

/// clap's message on one line: what precedes its usage block, without tips; a message that
/// lists items (missing required flags) keeps them, joined.
fn flag_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    parts.join(" ").trim_start_matches("error: ").to_owned()
}

/// Logs to stderr at `RUST_LOG`'s levels, else `default_level`; colours only on a terminal.
pub fn init_logging(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// The exit status for a run's outcome; a failure is printed first as `<name>: ` and
/// [`one_line`].
pub fn exit(name: &str, outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once (a context that already quotes its
/// cause's text does not repeat it).
pub fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command with the shapes of flags the binaries have.
    #[derive(Debug, Parser)]
    #[command(name = "demo", version, rename_all = "snake_case")]
    struct Flags {
        /// Required.
        #[arg(long)]
        work_dir: String,
        /// Required too.
        #[arg(long)]
        master: String,
        /// A number.
        #[arg(long, default_value_t = 1)]
        port: u16,
    }

    fn error_of(args: &[&str]) -> String {
        let e = Flags::try_parse_from(args).unwrap_err();
        flag_error_line(&e)
    }

    #[test]
    fn a_bad_value_names_the_flag_and_the_problem_on_one_line() {
        let line = error_of(&["demo", "--work_dir", "w", "--master", "m", "--port", "x"]);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("--port") && line.contains("invalid digit"),
            "{line}"
        );
    }

    #[test]
    fn missing_required_flags_are_all_named() {
        let line = error_of(&["demo"]);
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("--work_dir") && line.contains("--master"),
            "{line}"
        );
        assert!(!line.starts_with("error:"), "{line}");
    }

    #[test]
    fn an_unknown_flag_is_named_without_tips() {
        let line = error_of(&["demo", "--work_dir", "w", "--master", "m", "--prot", "1"]);
        assert!(line.contains("--prot") && !line.contains("tip"), "{line}");
    }

    #[test]
    fn help_and_version_are_not_errors() {
        assert_eq!(
            parse_from::<Flags, _, _>("demo", ["demo", "--version"]).unwrap_err(),
            ExitCode::SUCCESS
        );
        assert_eq!(
            parse_from::<Flags, _, _>("demo", ["demo"]).unwrap_err(),
            ExitCode::from(2)
        );
    }

    #[test]
    fn causes_appear_once() {
        let e = anyhow::anyhow!("disk full").context("writing /x: disk full");
        assert_eq!(one_line(&e), "writing /x: disk full");
        let e = anyhow::anyhow!("disk full").context("writing /x");
        assert_eq!(one_line(&e), "writing /x: disk full");
    }
}
