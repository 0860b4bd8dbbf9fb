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
    tools.setup(
        tools.ft(&ft_site, &["deploy", "v3", "--by", "bench"]),
        "fieldtrack deploy v3",
    )?;
    tools.setup(tools.baseline(&base_site, "v3"), "baseline.sh v3")?;

    let mut ft_instant = (Sample::default(), Sample::default());
    let mut ft_ready = (Sample::default(), Sample::default());
    let mut base_instant = Sample::default();
    let mut base_ready = Sample::default();
    for run in 0..opts.runs {
        // Each run deploys an instant tag (from ready1s, or v3 at first), then ready1s.
        let tag = INSTANT[run % 2];
        let t = timed(
            &ft_site,
            tag,
            tools.ft(&ft_site, &["deploy", tag, "--by", "bench"]),
            "fieldtrack deploy",
        )?;
        ft_instant.0.push(t.served);
        ft_instant.1.push(t.exited);
        let t = timed(
            &base_site,
            tag,
            tools.baseline(&base_site, tag),
            "baseline.sh",
        )?;
        base_instant.push(t.served);
        let t = timed(
            &ft_site,
            READY1S,
            tools.ft(&ft_site, &["deploy", READY1S, "--by", "bench"]),
            "fieldtrack deploy",
        )?;
        ft_ready.0.push(t.served);
        ft_ready.1.push(t.exited);
        let t = timed(
            &base_site,
            READY1S,
            tools.baseline(&base_site, READY1S),
            "baseline.sh",
        )?;
        base_ready.push(t.served);
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
    let ratio_instant = base_instant.median() / ft_instant.0.median();
    let ratio_ready = base_ready.median() / ft_ready.0.median();
    s.row(vec![
        "v* (listens at once)".into(),
        ft_instant.0.show(),
        base_instant.show(),
        format!("{ratio_instant:.1}x"),
        ft_instant.1.show(),
        "-".into(),
    ]);
    s.row(vec![
        "ready1s (listens after 1 s)".into(),
        ft_ready.0.show(),
        base_ready.show(),
        format!("{ratio_ready:.1}x"),
        ft_ready.1.show(),
        format!("at least 2x faster: {}", verdict(ratio_ready >= 2.0)),
    ]);
    s.notes.push(
        "fieldtrack: `fieldtrack deploy TAG` without a daemon (in-process), rollout.drain 0s (the drain only delays the exit, never the switch). baseline.sh: the seed's steps, health check 20 x 3 s. Both on their own site, interleaved run by run.".into(),
    );
    report.targets.push(Target {
        target: "deploy of ready1s at least 2x faster than baseline.sh".into(),
        measured: format!(
            "{ratio_ready:.1}x ({} against {})",
            secs(ft_ready.0.median()),
            secs(base_ready.median())
        ),
        met: ratio_ready >= 2.0,
    });
    report.sections.push(s);
    Ok(())
}
