//! `bench`: the figures of issue 7 on the real test bed (Docker engine, registry, nginx),
//! printed as one table. Run by `scripts/bench.sh`; the numbers mean what
//! `docs/performance.md` says.
//!
//! ```text
//! bench [--runs N] [--idle-secs S] [--cycles N] [--threads N] [--gap-ms MS]
//!       [--lab-switches N] [--only a,b,c,d,e,f] [--canary-window-secs S]
//!       [--fieldtrack PATH] [--baseline PATH] [--set KEY=TOML]... [--verbose]
//! ```
//!
//! `--set rollout.drain='"2s"'` overrides a key of every fieldtrack site's config after the
//! bench's own settings (`{site}` in the value is the site's folder), to try settings or a
//! patched binary without editing the bench.
//!
//! - a: deploy latency, fieldtrack (in-process) against `bench/baseline.sh`, side by side.
//! - b: rollback latency, cold (the old color was stopped) and warm (inside the drain).
//! - c: zero downtime: a load generator through nginx during deploy/rollback cycles.
//! - d: the daemon idle (CPU, RSS) and its peak RSS during a deployment.
//! - e: the nginx lab: how a reload takes effect, and which settings keep requests whole.
//! - f (issue 14, only when asked: `--only f`, `scripts/bench.sh --canary`): how many
//!   requests reach a bad image, and how many of them fail, with blue/green and its
//!   auto-rollback against a canary step of 10%.
//!
//! Every latency is the median of `--runs` runs, measured from the command's start until
//! nginx serves the target version: `/version` is polled through the site's nginx every
//! 10 ms, each time on a fresh connection. Comparisons run interleaved in the same
//! invocation, because the machine is shared and noisy.
//!
//! Where things are: `main` parses the command line and runs the sections in `sections/`,
//! one module per figure; they share the tools (`tools`: fieldtrack, baseline.sh, sites),
//! the timing of a command until nginx serves its target (`timing`), the daemon (`daemon`),
//! the load generator (`load`), the lab's stand-in apps (`stand_in`), the Docker engine
//! through bollard (`docker`), the /proc readers (`procfs`) and the report (`report`).

mod daemon;
mod docker;
mod load;
mod opts;
mod procfs;
mod report;
mod sections;
mod stand_in;
mod timing;
mod tools;

use std::time::Instant;

use fieldtrack_testbed::Bed;

use docker::Engine;
use opts::Opts;
use report::Report;
use sections::{
    canary, daemon_footprint::IdleDaemon, deploy_latency, nginx_lab, rollback_latency,
    zero_downtime, INSTANT, READY1S,
};
use tools::Tools;

type Result<T> = std::result::Result<T, String>;

fn main() {
    let opts = match Opts::parse(std::env::args().skip(1).collect()) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("bench: {e}\n{}", Opts::USAGE);
            std::process::exit(2);
        }
    };
    match run(&opts) {
        Ok(report) => {
            println!("{report}");
        }
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
}

fn run(opts: &Opts) -> Result<Report> {
    let started = Instant::now();
    eprintln!("bench: bringing the test bed up");
    let bed = Bed::up().map_err(|e| e.to_string())?;
    let docker = Engine::connect(&bed.docker_host).map_err(|e| e.to_string())?;
    let tools = Tools::new(opts, &bed, &docker);
    eprintln!("bench: pulling the test images once, so every figure is for a cached image");
    for tag in INSTANT.iter().chain(&["v3", READY1S]) {
        docker.pull(&bed.image(tag)).map_err(|e| e.to_string())?;
    }
    let mut report = Report {
        sections: Vec::new(),
        targets: Vec::new(),
    };
    report.sections.push(sections::settings(opts));

    // The idle daemon runs beside sections a and b: it is idle whatever other sites do.
    let idle = if opts.wants('d') {
        Some(IdleDaemon::start(&tools, opts.idle_secs)?)
    } else {
        None
    };
    if opts.wants('a') {
        deploy_latency::run(&tools, opts, &mut report)?;
    }
    if opts.wants('b') {
        rollback_latency::run(&tools, opts, &mut report)?;
    }
    if let Some(idle) = idle {
        idle.finish(&tools, &mut report)?;
    }
    if opts.wants('c') {
        zero_downtime::run(&tools, opts, &mut report)?;
    }
    if opts.wants('e') {
        nginx_lab::run(&tools, opts, &mut report)?;
    }
    if opts.wants('f') {
        canary::run(&tools, opts, &mut report)?;
    }
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(report)
}
