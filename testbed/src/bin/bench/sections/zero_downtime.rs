//! c. Zero downtime: a load generator through nginx during deploy/rollback cycles, driven by
//! the fieldtrack daemon (drain 1 s, and 0 s for comparison) or by `bench/baseline.sh`.

use std::thread;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::load::{Conn, Load, LoadStats};
use crate::opts::Opts;
use crate::report::{verdict, Report, Section, Target};
use crate::timing::{served, settle, timed};
use crate::tools::Tools;
use crate::Result;

/// Who drives the cycles of a load run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Driver {
    /// The fieldtrack daemon with this drain: `deploy v2` and `rollback --yes`, alternating.
    Daemon(&'static str),
    /// `baseline.sh v2`, `baseline.sh v1`, alternating.
    Baseline,
}

pub fn run(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    eprintln!(
        "bench: c. zero downtime: load through nginx during {} deploy/rollback cycles",
        opts.cycles
    );
    // The comparisons only show how failures come about: half the cycles do.
    let fewer = (opts.cycles / 2).max(2);
    let runs = [
        (Driver::Daemon("1s"), Conn::Close, opts.cycles, true),
        (Driver::Daemon("1s"), Conn::KeepAlive, opts.cycles, true),
        (Driver::Daemon("0s"), Conn::Close, fewer, false),
        (Driver::Baseline, Conn::Close, fewer, false),
    ];
    let mut s = Section::new(
        "c. Zero downtime: deploy/rollback cycles alternating v1/v2 under load through nginx",
        &[
            "driver",
            "clients",
            "cycles",
            "requests",
            "failed",
            "keep-alive closes retried",
            "p50",
            "p99",
            "max",
            "target",
        ],
    );
    for (driver, conn, cycles, judged) in runs {
        let (mut stats, cycle_starts) = load_run(tools, opts, driver, conn, cycles)?;
        let driver_name = match driver {
            Driver::Daemon(drain) => format!("fieldtrack daemon, drain {drain}"),
            Driver::Baseline => "baseline.sh (no drain)".into(),
        };
        let failed = stats.failed();
        s.row(vec![
            driver_name.clone(),
            conn.name().into(),
            cycles.to_string(),
            stats.requests.to_string(),
            stats.failure_text(),
            stats.retried_cell(conn),
            format!("{:.2} ms", stats.percentile_ms(0.50)),
            format!("{:.2} ms", stats.percentile_ms(0.99)),
            format!("{:.1} ms", stats.percentile_ms(1.0)),
            if judged {
                format!("zero failed: {}", verdict(failed == 0))
            } else {
                "(for comparison)".into()
            },
        ]);
        if tools.verbose && conn == Conn::KeepAlive {
            eprintln!(
                "bench:   {} answers carried `Connection: close`; {} keep-alive closes retried",
                stats.closed_by_header, stats.retried
            );
        }
        if failed > 0 && tools.verbose {
            let when: Vec<String> = stats
                .first_failures
                .iter()
                .take(8)
                .map(|(t, kind)| {
                    let since = cycle_starts
                        .iter()
                        .rev()
                        .find(|c| **c <= *t)
                        .map_or(String::new(), |c| {
                            format!(" ({:.0} ms into its cycle)", (t - c) * 1000.0)
                        });
                    format!("{t:.2} s {kind}{since}")
                })
                .collect();
            eprintln!(
                "bench:   first failures of {driver_name}, {}: {}",
                conn.name(),
                when.join("; ")
            );
        }
        if judged {
            report.targets.push(Target {
                target: format!("zero failed requests ({}, {})", driver_name, conn.name()),
                measured: format!(
                    "{failed} of {}{}",
                    stats.requests,
                    if conn == Conn::KeepAlive {
                        format!("; {} keep-alive closes retried", stats.retried)
                    } else {
                        String::new()
                    }
                ),
                met: failed == 0,
            });
        }
    }
    s.notes.push(format!(
        "Each cycle is `fieldtrack deploy v2` or `fieldtrack rollback --yes` (back to v1), both followed through the daemon, or baseline.sh for v2 then v1. Failed: every non-2xx answer and every connection error. A keep-alive client whose idle connection nginx closed as the request went out (an old worker exiting after the reload) sends the request again once on a new connection, as browsers, curl and Go's net/http do for a GET (RFC 9112, 9.3.1); these are counted under \"retried\", and a retry that fails counts as failed. Latency: per request, retry included. {} threads, {} ms between a thread's requests.",
        opts.threads,
        opts.gap.as_millis()
    ));
    report.sections.push(s);
    Ok(())
}

/// One load run: a site, the driver, the load, the cycles. Returns the load's figures and
/// the start of every cycle (seconds since the load started).
fn load_run(
    tools: &Tools,
    opts: &Opts,
    driver: Driver,
    conn: Conn,
    cycles: usize,
) -> Result<(LoadStats, Vec<f64>)> {
    eprintln!("bench:   {driver:?}, {}", conn.name());
    let drain = match driver {
        Driver::Daemon(drain) => drain,
        Driver::Baseline => "0s",
    };
    let site = tools.site(drain)?;
    let mut daemon = None;
    match driver {
        Driver::Daemon(_) => {
            // History [v1, v2]: `rollback --yes` goes back to v1 after every `deploy v2`.
            tools.deploy_untimed(&site, "v2")?;
            tools.deploy_untimed(&site, "v1")?;
            let d = Daemon::start(tools, &site)?;
            d.wait_converged(&site, "v1")?;
            daemon = Some(d);
        }
        Driver::Baseline => tools.setup(tools.baseline(&site, "v1"), "baseline.sh v1")?,
    }
    // The setup's last reload must have taken effect (baseline.sh returns before it has).
    settle(&site, "v1")?;
    let load = Load::start(site.nginx_addr(), conn, opts.threads, opts.gap);
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let mut cycle_starts = Vec::new();
    let mut result = Ok(());
    for cycle in 0..cycles {
        let target = if cycle % 2 == 0 { "v2" } else { "v1" };
        cycle_starts.push(t0.elapsed().as_secs_f64());
        let cmd = match driver {
            Driver::Daemon(_) if target == "v2" => tools.deploy(&site, "v2"),
            Driver::Daemon(_) => tools.ft(&site, &["rollback", "--yes", "--by", "bench"]),
            Driver::Baseline => tools.baseline(&site, target),
        };
        if let Err(e) = timed(&site, target, cmd, &format!("cycle {cycle} to {target}")) {
            result = Err(e);
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(Duration::from_secs(1));
    let stats = load.finish();
    if let Some(d) = daemon {
        d.stop()?;
    }
    result?;
    if served(&site)? != if cycles.is_multiple_of(2) { "v1" } else { "v2" } {
        return Err("the load run ended on the wrong version".into());
    }
    Ok((stats, cycle_starts))
}
