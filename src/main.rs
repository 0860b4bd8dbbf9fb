//! The `fieldtrack` binary: parse, run, map the outcome to an exit code.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use fieldtrack::cli::{self, Cli, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, cli::Command::Daemon) {
        // `fieldtrack status | head`: die quietly on a closed pipe like any Unix tool,
        // instead of panicking in println!. The daemon keeps Rust's default (ignored).
        // signal-hook has no safe SIG_DFL: its handler restores the default and raises the
        // signal again, so the process dies of SIGPIPE all the same.
        let _ = signal_hook::flag::register_conditional_default(
            signal_hook::consts::SIGPIPE,
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        );
    }
    init_logging(cli.log_format.unwrap_or(LogFormat::Text), cli.log_level());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fieldtrack: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Every message already carries its causes, so it is printed once, as is, but
            // for escape sequences: it may quote a container's log tail.
            eprintln!("fieldtrack: {}", cli::terminal::printable(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(format: LogFormat, default: &str) {
    let (mut filter, cap) = match tracing_subscriber::EnvFilter::try_from_env("FIELDTRACK_LOG") {
        Ok(filter) => (filter, "info"),
        Err(_) => (tracing_subscriber::EnvFilter::new(default), default),
    };
    // The HTTP layers log request and answer bodies at debug, and a container's create body
    // holds its env file's values: they never go past info, whatever FIELDTRACK_LOG says
    // (nor past the default level when it says nothing).
    for quiet in ["bollard", "hyper", "hyper_util", "reqwest"] {
        if let Ok(directive) = format!("{quiet}={cap}").parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // A log line first erases the progress spinner it would be written after.
        .with_writer(cli::progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.compact().init(),
    }
}
