//! f. Canary (issue 14, only when asked): how many requests reach a bad image, and how many
//! of them fail, with blue/green and its auto-rollback against a canary step of 10%, under
//! the load of section c.

use std::collections::BTreeMap;
use std::fs;
use std::thread;
use std::time::Duration;

use fieldtrack_testbed::Site;

use crate::daemon::Daemon;
use crate::load::{Conn, Load};
use crate::opts::Opts;
use crate::report::{counts, Report, Sample, Section};
use crate::timing::{settle, COMMAND_LIMIT, POLL};
use crate::tools::{desired_image, Tools};
use crate::Result;

/// The bad images of section f. `flaky`: its `/health` answers 500 from 3 s after it
/// starts, its `/version` keeps answering 200, so health probes catch it and real requests
/// do not. `err5`: `/health` always fine, every 5th other request answers 500, so only real
/// requests catch it.
const BAD: [&str; 2] = ["flaky", "err5"];
/// The version every run of section f starts from and goes back to.
const STABLE: &str = "v1";
/// The canary's one step, and its bounds.
const CANARY_WEIGHT: u32 = 10;
const CANARY_PAUSE: &str = "20s";
const CANARY_MIN_REQUESTS: u32 = 50;
const CANARY_MAX_ERROR_RATE: &str = "0.01";
/// Both strategies' drain.
const CANARY_BENCH_DRAIN: &str = "10s";

/// How a bad image is deployed in section f.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Strategy {
    /// Straight to 100% after the health gate, rollout.auto_rollback watching the drain.
    BlueGreen,
    /// One canary step at [`CANARY_WEIGHT`]%, then the full switch.
    Canary,
}

impl Strategy {
    fn name(self) -> String {
        match self {
            Strategy::BlueGreen => {
                format!("blue/green, auto-rollback, drain {CANARY_BENCH_DRAIN}")
            }
            Strategy::Canary => format!(
                "canary, 1 step {CANARY_WEIGHT}% (pause {CANARY_PAUSE}, min_requests {CANARY_MIN_REQUESTS}, max_error_rate {CANARY_MAX_ERROR_RATE})"
            ),
        }
    }
}

/// One deployment of a bad image under load, counted over the window that starts at the
/// switch (the first change of the upstream file).
#[derive(Debug, Clone)]
struct BadRun {
    /// Requests sent in the window that an image answered.
    requests: u64,
    /// Of those, answered by the bad image.
    reached: u64,
    /// Of those, not 2xx.
    reached_failed: u64,
    /// Requests of the whole load run that failed without any image's answer (connection
    /// errors, nginx's own 5xx).
    other_failed: u64,
    /// From the switch to the last request the bad image answered; None when it still
    /// answered in the window's last second (it stays live).
    back_after: Option<f64>,
    /// From the switch until `fieldtrack deploy` exited, and its exit code.
    exited_after: f64,
    exit: Option<i32>,
}

/// The two sites of section f, each with its daemon, serving [`STABLE`].
struct CanaryRig<'a> {
    site: Site,
    daemon: Daemon,
    strategy: Strategy,
    tools: &'a Tools<'a>,
}

impl<'a> CanaryRig<'a> {
    fn new(tools: &'a Tools<'a>, strategy: Strategy) -> Result<CanaryRig<'a>> {
        let mut site = tools.site(CANARY_BENCH_DRAIN)?;
        site.set("rollout.auto_rollback", "true");
        if strategy == Strategy::Canary {
            // nginx.access_log is set on every bed site already.
            site.set(
                "canary.steps",
                &format!("[{{ weight = {CANARY_WEIGHT}, pause = \"{CANARY_PAUSE}\" }}]"),
            );
            site.set("canary.min_requests", &CANARY_MIN_REQUESTS.to_string());
            site.set("canary.max_error_rate", CANARY_MAX_ERROR_RATE);
        }
        // The first deployment has no stable color, so no canary step either.
        tools.deploy_untimed(&site, STABLE)?;
        let daemon = Daemon::start(tools, &site)?;
        daemon.wait_converged(&site, STABLE)?;
        Ok(CanaryRig {
            site,
            daemon,
            strategy,
            tools,
        })
    }

    /// Deploys `bad` through the daemon under load and counts until `window` after the
    /// switch and the deploy's exit, whichever is later; then puts the site back on
    /// [`STABLE`] (by hand where nothing rolled back).
    fn run(&self, opts: &Opts, bad: &str, run: usize) -> Result<BadRun> {
        let (site, tools) = (&self.site, self.tools);
        settle(site, STABLE)?;
        let before = fs::read_to_string(&site.upstream_file).map_err(|e| e.to_string())?;
        let load = Load::start(site.nginx_addr(), Conn::Close, opts.threads, opts.gap);
        thread::sleep(Duration::from_secs(1));
        let note = format!("bench run {}", run + 1);
        let mut child = tools
            .ft(site, &["deploy", bad, "--by", "bench", "--note", &note])
            .spawn()
            .map_err(|e| format!("cannot start fieldtrack deploy {bad}: {e}"))?;
        let window = opts.canary_window.as_secs_f64();
        let mut switch: Option<f64> = None;
        let mut exit: Option<(f64, Option<i32>)> = None;
        let outcome = loop {
            let now = load.t0.elapsed().as_secs_f64();
            if switch.is_none()
                && fs::read_to_string(&site.upstream_file).is_ok_and(|t| t != before)
            {
                switch = Some(now);
            }
            if exit.is_none() {
                match child.try_wait() {
                    Ok(Some(status)) => exit = Some((now, status.code())),
                    Ok(None) => {}
                    Err(e) => break Err(e.to_string()),
                }
            }
            match (switch, exit) {
                (Some(s), Some(_)) if now >= s + window => break Ok(()),
                (None, Some((_, code))) => {
                    break Err(format!(
                    "fieldtrack deploy {bad} exited ({code:?}) before nginx was switched; see {}",
                    site.dir.join("bench.log").display()
                ))
                }
                _ => {}
            }
            if now > window + COMMAND_LIMIT.as_secs_f64() {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("fieldtrack deploy {bad} did not end"));
            }
            thread::sleep(POLL);
        };
        let stats = load.finish();
        outcome?;
        let (switch, (exited_at, code)) = (switch.unwrap_or_default(), exit.unwrap_or_default());
        let end = switch + window;
        let in_window = |t: f32| (switch..end).contains(&f64::from(t));
        let requests = stats
            .by_tag
            .values()
            .flatten()
            .filter(|(t, _)| in_window(*t))
            .count() as u64;
        let reached: Vec<(f32, bool)> = stats
            .by_tag
            .get(bad)
            .map(|a| a.iter().copied().filter(|(t, _)| in_window(*t)).collect())
            .unwrap_or_default();
        let tagged_failed: u64 = stats
            .by_tag
            .values()
            .flatten()
            .filter(|(_, ok)| !ok)
            .count() as u64;
        let last = reached
            .iter()
            .map(|(t, _)| f64::from(*t))
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        let result = BadRun {
            requests,
            reached: reached.len() as u64,
            reached_failed: reached.iter().filter(|(_, ok)| !ok).count() as u64,
            other_failed: stats.failed().saturating_sub(tagged_failed),
            back_after: last.filter(|t| *t < end - 1.0).map(|t| t - switch),
            exited_after: exited_at - switch,
            exit: code,
        };
        eprintln!(
            "bench:   {bad}, {:?}, run {}: {result:?}",
            self.strategy,
            run + 1
        );
        // Back to the stable version: an auto-rollback or an aborted canary wrote it into
        // the desired file already; a bad image that stayed live is replaced by hand.
        if desired_image(site).as_deref() != Some(STABLE) {
            tools.setup(
                tools.ft(
                    site,
                    &["deploy", STABLE, "--by", "bench", "--note", "bench: back"],
                ),
                &format!("fieldtrack deploy {STABLE}"),
            )?;
        }
        self.daemon.wait_converged(site, STABLE)?;
        Ok(result)
    }
}

pub fn run(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    eprintln!(
        "bench: f. canary: requests that reach a bad image ({} runs, {} s windows)",
        opts.runs,
        opts.canary_window.as_secs()
    );
    for tag in BAD.iter().chain(&[STABLE]) {
        tools
            .docker
            .pull(&tools.bed.image(tag))
            .map_err(|e| e.to_string())?;
    }
    let rigs = [
        CanaryRig::new(tools, Strategy::BlueGreen)?,
        CanaryRig::new(tools, Strategy::Canary)?,
    ];
    // (bad image, strategy) -> the runs; interleaved run by run, as the machine is shared.
    let mut runs: BTreeMap<(usize, usize), Vec<BadRun>> = BTreeMap::new();
    for run in 0..opts.runs {
        for (b, bad) in BAD.iter().enumerate() {
            for (r, rig) in rigs.iter().enumerate() {
                runs.entry((b, r))
                    .or_default()
                    .push(rig.run(opts, bad, run)?);
            }
        }
        eprintln!("bench:   run {}/{} done", run + 1, opts.runs);
    }
    let window = opts.canary_window.as_secs();
    let mut s = Section::new(
        &format!(
            "f. Canary (issue 14): a bad image deployed under load, {window} s from the switch"
        ),
        &[
            "bad image",
            "strategy",
            "requests",
            "answered by the bad image",
            "of those failed",
            "failed otherwise",
            "switch → back on stable",
            "deploy exits after (code)",
        ],
    );
    for ((b, r), runs) in &runs {
        let count = |f: fn(&BadRun) -> u64| counts(runs.iter().map(f).collect());
        let stayed = runs.iter().filter(|x| x.back_after.is_none()).count();
        let mut back = Sample::default();
        for x in runs {
            if let Some(t) = x.back_after {
                back.push(Duration::from_secs_f64(t));
            }
        }
        let back = match stayed {
            0 => back.show(),
            n if n == runs.len() => format!("never: stays live ({window} s counted)"),
            n => format!("{} ({n} of {} runs stayed live)", back.show(), runs.len()),
        };
        let mut exited = Sample::default();
        for x in runs {
            exited.push(Duration::from_secs_f64(x.exited_after.max(0.0)));
        }
        let codes: Vec<String> = runs
            .iter()
            .map(|x| x.exit.map_or("signal".into(), |c| c.to_string()))
            .collect();
        s.row(vec![
            BAD[*b].into(),
            rigs[*r].strategy.name(),
            count(|x| x.requests),
            count(|x| x.reached),
            count(|x| x.reached_failed),
            count(|x| x.other_failed),
            back,
            format!("{} ({})", exited.show(), codes.join(", ")),
        ]);
    }
    for (b, bad) in BAD.iter().enumerate() {
        let median = |r: usize, f: fn(&BadRun) -> u64| {
            let mut v: Vec<u64> = runs
                .get(&(b, r))
                .map_or(Vec::new(), |x| x.iter().map(f).collect());
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        let (bg, ca) = (median(0, |x| x.reached), median(1, |x| x.reached));
        let (bg_failed, ca_failed) = (
            median(0, |x| x.reached_failed),
            median(1, |x| x.reached_failed),
        );
        s.notes.push(format!(
            "{bad}, in the {window} s window: with the canary {ca} requests reached it ({ca_failed} failed), with blue/green {bg} ({bg_failed} failed): {:.1}% of the requests{} (medians).",
            100.0 * ca as f64 / bg.max(1) as f64,
            if bg_failed > 0 {
                format!(", {:.1}% of the failures", 100.0 * ca_failed as f64 / bg_failed as f64)
            } else {
                String::new()
            }
        ));
    }
    s.notes.push(format!(
        "Each run: the site serves {STABLE} through its daemon; the load generator of section c ({} threads, new connection per request, {} ms between a thread's requests) starts; 1 s later `fieldtrack deploy BAD` (through the daemon). The switch is the first change of the upstream file (100% for blue/green, the 10% step for the canary); the window is the {window} s after it. requests: sent in the window and answered by an app; answered by the bad image: its `X-Testapp-Tag` header named it; failed: not 2xx; failed otherwise: the whole load run's requests that no app answered (connection errors, nginx's own 5xx). switch → back on stable: until the last request the bad image answered (\"stays live\" when it still answered in the window's last second). Medians (min-max) of {} runs, interleaved.",
        opts.threads,
        opts.gap.as_millis(),
        opts.runs
    ));
    s.notes.push("flaky: `/health` answers 500 from 3 s after its start, `/version` keeps answering 200: health probes (3 failed in a row, 1 s apart, during the drain or the canary step) catch it, and no real request fails; what differs is how many reached it. err5: `/health` always answers 200 and every 5th other request 500: **blue/green's probes never see it, so it stays live** (its failures are counted over the window, then the bench deploys v1 by hand); the canary's judge reads nginx's access log each second and aborts the step once the canary's errors exceed max_error_rate of min_requests.".into());
    report.sections.push(s);
    Ok(())
}
