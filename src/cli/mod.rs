//! The operator's command line: argument parsing, one module per command family, and the
//! mapping of every failure to an exit code (0 success, 1 the operation failed, 2 bad usage
//! or invalid input, 3 `plan` found changes).

mod canary;
mod check;
mod deploy;
mod init;
mod plan;
pub mod progress;
mod reconcile;
mod rollback;
mod show;
pub mod terminal;
mod view;

use std::path::PathBuf;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError};
use crate::desired::DesiredError;
use crate::reconcile::{ContextError, LiveContext, ReconcileError};
use crate::state::lock::LockError;

/// Keeps one containerised web app deployed blue/green behind nginx, converging it toward a
/// desired-state file.
#[derive(Debug, Parser)]
#[command(name = "fieldtrack", version, about)]
pub struct Cli {
    /// The config file (else $FIELDTRACK_CONFIG, ./fieldtrack.toml, /etc/fieldtrack/fieldtrack.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format on stderr (text by default). Given, the commands log at info as well.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log what is done at info on stderr too (the daemon always does); FIELDTRACK_LOG
    /// sets any level.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile on every change of the desired file and every `rollout.resync`.
    Daemon,
    /// One full reconcile pass in this process, then exit (0 converged, 1 failed).
    Reconcile,
    /// Validate IMAGE, write the desired file, then wait until it converged or failed.
    Deploy(deploy::DeployArgs),
    /// Write an earlier history entry into the desired file (after confirmation), then wait.
    Rollback(rollback::RollbackArgs),
    /// End the running canary step now: the next step begins, or nginx switches to the
    /// canary alone after the last one (exit 1 when no canary runs).
    Promote,
    /// Stop the running canary: every request back to the stable color, the candidate
    /// removed, the desired file rewritten to the stable image (exit 1 when no canary runs).
    Abort(canary::AbortArgs),
    /// What a reconcile would do now, without doing it (exit 0 in sync, 3 changes).
    Plan,
    /// Desired, live color and image, phase, last message, history.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The deployment history, numbered, current first.
    History {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Write a commented fieldtrack.toml, a desired.toml and the nginx snippets; never
    /// overwrites a file.
    Init(init::InitArgs),
    /// Check the config, desired file, Docker, registry credentials, nginx and the color
    /// ports; each line OK, WARN or FAIL (exit 1 on any FAIL).
    Check,
    /// Print a shell completion script (packaging: bash, zsh, fish).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page fieldtrack(1), roff (packaging).
    #[command(hide = true)]
    Manpage {
        /// Write fieldtrack.1 and one page per command (fieldtrack-deploy.1, ...) into DIR
        /// instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

impl Cli {
    /// The log level unless FIELDTRACK_LOG says otherwise: the daemon logs what it does at
    /// info; a command shows its progress instead and logs only warnings, unless asked.
    pub fn log_level(&self) -> &'static str {
        if self.verbose || self.log_format.is_some() || matches!(self.command, Command::Daemon) {
            "info"
        } else {
            "warn"
        }
    }
}

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The desired file is unusable.
    #[error(transparent)]
    Desired(DesiredError),
    /// Other invalid input (an image, a note, a flag value); nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// The Docker engine could not be reached, or the health prober not built.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// The reconcile lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The reconcile pass failed.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    /// The daemon stopped on an error.
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    /// The operation did not succeed, in plain words.
    #[error("{0}")]
    Failed(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Desired(_) | CliError::Invalid(_) => 2,
            _ => 1,
        }
    }
}

/// Runs a parsed command line; Ok holds the exit code of a command that succeeded.
pub async fn run(cli: Cli) -> Result<u8, CliError> {
    let path = Config::locate(cli.config.as_deref());
    let load = || Config::load(&path);
    match cli.command {
        Command::Daemon => {
            let cfg = load()?;
            Ok(crate::daemon::run(path, cfg).await?)
        }
        Command::Reconcile => reconcile::run(load()?).await,
        Command::Deploy(args) => deploy::run(load()?, args).await,
        Command::Rollback(args) => rollback::run(load()?, args).await,
        Command::Promote => canary::promote(&load()?).await,
        Command::Abort(args) => canary::abort(load()?, args).await,
        Command::Plan => plan::run(load()?).await,
        Command::Status { json } => show::status(&load()?, json),
        Command::History { json } => show::history(&load()?, json),
        // These work without a valid config: they make one, judge one, or package.
        Command::Init(args) => init::run(cli.config.as_deref(), args),
        Command::Check => check::run(&path).await,
        Command::Completions { shell } => print_completions(shell),
        Command::Manpage { out_dir } => print_manpage(out_dir.as_deref()),
    }
}

/// The completion script for `shell`, generated from the parser itself.
fn print_completions(shell: clap_complete::Shell) -> Result<u8, CliError> {
    // clap_complete offers hidden subcommands too, and clap cannot remove one: rebuild the
    // root from the parser's own arguments and visible subcommands, so nothing is restated.
    let full = Cli::command();
    let mut visible = clap::Command::new("fieldtrack").version(env!("CARGO_PKG_VERSION"));
    if let Some(about) = full.get_about() {
        visible = visible.about(about.clone());
    }
    visible = visible
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    clap_complete::generate(shell, &mut visible, "fieldtrack", &mut std::io::stdout());
    Ok(0)
}

/// fieldtrack(1), or every page into `out_dir`, generated from the parser itself.
fn print_manpage(out_dir: Option<&std::path::Path>) -> Result<u8, CliError> {
    let failed = |e: std::io::Error| CliError::Failed(format!("cannot write the man page: {e}"));
    match out_dir {
        Some(dir) => clap_mangen::generate_to(Cli::command(), dir).map_err(failed)?,
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .and_then(|()| std::io::Write::write_all(&mut std::io::stdout(), &page))
                .map_err(failed)?;
        }
    }
    Ok(0)
}

/// The passes' context on the real Docker engine and nginx.
pub(crate) async fn context(cfg: Config) -> Result<LiveContext, CliError> {
    Ok(LiveContext::connect(cfg).await?)
}
