//! a. Deploy latency: `fieldtrack deploy` in-process against `bench/baseline.sh`, each on a
//! site of its own, interleaved run by run, for an instant app and one that listens after 1 s.

use crate::opts::Opts;
use crate::report::{secs, verdict, Report, Sample, Section, Target};
use crate::sections::{INSTANT, READY1S};
use crate::timing::timed;
use crate::tools::Tools;
use crate::Result;

pub fn run(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    eprintln!(
        "bench: a. deploy latency, fieldtrack against baseline.sh ({} runs)",
        opts.runs
    );
    let ft_site = tools.site("0s")?;
    let base_site = tools.site("0s")?;
    tools.deploy_untimed(&ft_site, "v3")?;
    tools.setup(tools.baseline(&base_site, "v3"), "baseline.sh v3")?;

    let mut instant = AppFigures::default();
    let mut ready = AppFigures::default();
    for run in 0..opts.runs {
        // Each run deploys an instant tag (from ready1s, or v3 at first), then ready1s.
        for (tag, figures) in [(INSTANT[run % 2], &mut instant), (READY1S, &mut ready)] {
            let t = timed(
                &ft_site,
                tag,
                tools.deploy(&ft_site, tag),
                "fieldtrack deploy",
            )?;
            figures.ft_served.push(t.served);
            figures.ft_exited.push(t.exited);
            let t = timed(
                &base_site,
                tag,
                tools.baseline(&base_site, tag),
                "baseline.sh",
            )?;
            figures.baseline.push(t.served);
        }
        eprintln!("bench:   run {}/{} done", run + 1, opts.runs);
    }

    let mut s = Section::new(
        "a. Deploy latency: command start until nginx serves the new version (image cached)",
        &[
            "app",
            "fieldtrack deploy",
            "baseline.sh",
            "baseline / fieldtrack",
            "fieldtrack exits after",
            "target",
        ],
    );
    let ratio_instant = instant.baseline.median() / instant.ft_served.median();
    let ratio_ready = ready.baseline.median() / ready.ft_served.median();
    s.row(vec![
        "v* (listens at once)".into(),
        instant.ft_served.show(),
        instant.baseline.show(),
        format!("{ratio_instant:.1}x"),
        instant.ft_exited.show(),
        "-".into(),
    ]);
    s.row(vec![
        "ready1s (listens after 1 s)".into(),
        ready.ft_served.show(),
        ready.baseline.show(),
        format!("{ratio_ready:.1}x"),
        ready.ft_exited.show(),
        format!("at least 2x faster: {}", verdict(ratio_ready >= 2.0)),
    ]);
    s.notes.push(
        "fieldtrack: `fieldtrack deploy TAG` without a daemon (in-process), rollout.drain 0s (the drain only delays the exit, never the switch). baseline.sh: the seed's steps, health check 20 x 3 s. Both on their own site, interleaved run by run.".into(),
    );
    report.targets.push(Target {
        target: "deploy of ready1s at least 2x faster than baseline.sh".into(),
        measured: format!(
            "{ratio_ready:.1}x ({} against {})",
            secs(ready.ft_served.median()),
            secs(ready.baseline.median())
        ),
        met: ratio_ready >= 2.0,
    });
    report.sections.push(s);
    Ok(())
}

/// One app's figures: fieldtrack's, until nginx served the version and until the command
/// exited, and baseline.sh's until nginx served it.
#[derive(Default)]
struct AppFigures {
    ft_served: Sample,
    ft_exited: Sample,
    baseline: Sample,
}
