//! The command line: which sections run, how many times, and what they run against.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Result;

/// The command line.
pub struct Opts {
    pub runs: usize,
    pub idle_secs: u64,
    pub cycles: usize,
    pub threads: usize,
    pub gap: Duration,
    pub lab_switches: usize,
    pub only: Vec<char>,
    pub canary_window: Duration,
    pub fieldtrack: PathBuf,
    pub baseline: PathBuf,
    pub sets: Vec<(String, String)>,
    pub verbose: bool,
}

impl Opts {
    pub const USAGE: &'static str = "usage: bench [--runs N] [--idle-secs S] [--cycles N] [--threads N] [--gap-ms MS] [--lab-switches N] [--only a,b,c,d,e,f] [--canary-window-secs S] [--fieldtrack PATH] [--baseline PATH] [--set KEY=TOML]... [--verbose]";

    pub fn parse(args: Vec<String>) -> Result<Opts> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the testbed crate lives in the workspace")
            .to_path_buf();
        let mut opts = Opts {
            runs: 5,
            idle_secs: 60,
            cycles: 20,
            threads: 4,
            gap: Duration::from_millis(2),
            lab_switches: 10,
            // f (the canary figures) takes minutes of its own: only when asked.
            only: "abcde".chars().collect(),
            canary_window: Duration::from_secs(30),
            fieldtrack: workspace.join("target/release/fieldtrack"),
            baseline: workspace.join("bench/baseline.sh"),
            sets: Vec::new(),
            verbose: false,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            let number = |v: String| -> Result<u64> {
                v.parse::<u64>()
                    .map_err(|_| format!("{arg}: not a number: {v}"))
            };
            match arg.as_str() {
                "--runs" => opts.runs = number(value()?)?.max(1) as usize,
                "--idle-secs" => opts.idle_secs = number(value()?)?,
                "--cycles" => opts.cycles = number(value()?)?.max(2) as usize,
                "--threads" => opts.threads = number(value()?)?.max(1) as usize,
                "--gap-ms" => opts.gap = Duration::from_millis(number(value()?)?),
                "--lab-switches" => opts.lab_switches = number(value()?)?.max(1) as usize,
                "--only" => {
                    opts.only = value()?.chars().filter(char::is_ascii_alphabetic).collect()
                }
                "--canary-window-secs" => {
                    opts.canary_window = Duration::from_secs(number(value()?)?.max(5))
                }
                "--fieldtrack" => opts.fieldtrack = PathBuf::from(value()?),
                "--baseline" => opts.baseline = PathBuf::from(value()?),
                "--set" => {
                    let set = value()?;
                    let (key, literal) = set
                        .split_once('=')
                        .ok_or_else(|| format!("--set {set}: expected KEY=TOML"))?;
                    opts.sets
                        .push((key.trim().to_string(), literal.trim().to_string()));
                }
                "--verbose" => opts.verbose = true,
                "-h" | "--help" => {
                    println!("{}", Opts::USAGE);
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        // Absolute: the commands run in their site's folder.
        for (what, path) in [
            ("fieldtrack", &mut opts.fieldtrack),
            ("baseline", &mut opts.baseline),
        ] {
            *path = fs::canonicalize(&*path).map_err(|e| {
                format!(
                    "{what} {}: {e} (scripts/bench.sh builds it)",
                    path.display()
                )
            })?;
        }
        Ok(opts)
    }

    pub fn wants(&self, section: char) -> bool {
        self.only.contains(&section)
    }
}
