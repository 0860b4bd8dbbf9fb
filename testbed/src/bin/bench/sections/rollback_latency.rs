//! b. Rollback latency: cold (the previous color was stopped: a container starts) beside the
//! app's own ready time, and warm (inside the drain, the daemon running: a pure nginx switch).

use std::fs;
use std::net::SocketAddr;
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use fieldtrack_testbed::{util, Site};

use crate::daemon::{Daemon, Status};
use crate::opts::Opts;
use crate::report::{secs, verdict, Report, Sample, Section, Target};
use crate::sections::READY1S;
use crate::timing::{timed, version, COMMAND_LIMIT, POLL};
use crate::tools::{desired_image, wait_child, Tools};
use crate::Result;

pub fn run(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    eprintln!(
        "bench: b. rollback latency, cold and warm ({} runs)",
        opts.runs
    );
    // Cold: in-process, drain 0s, so the previous color is gone when the rollback starts.
    let site = tools.site("0s")?;
    tools.deploy_untimed(&site, "v1")?;
    tools.deploy_untimed(&site, READY1S)?;
    let mut cold_instant = Sample::default();
    let mut cold_ready = Sample::default();
    let mut ready_instant = Sample::default();
    let mut ready_ready = Sample::default();
    let ready_port = util::free_ports(1).map_err(|e| e.to_string())?[0];
    for run in 0..opts.runs {
        // History [ready1s, v1]: rollback starts v1; then [v1, ready1s]: rollback starts ready1s.
        let t = timed(
            &site,
            "v1",
            tools.ft(&site, &["rollback", "--yes", "--by", "bench"]),
            "fieldtrack rollback",
        )?;
        cold_instant.push(t.served);
        let t = timed(
            &site,
            READY1S,
            tools.ft(&site, &["rollback", "--yes", "--by", "bench"]),
            "fieldtrack rollback",
        )?;
        cold_ready.push(t.served);
        // The app's own ready time: create and start it through the Docker API, as fieldtrack
        // does, and poll its /health directly every 10 ms.
        ready_instant.push(app_ready_time(tools, "v1", ready_port, run)?);
        ready_ready.push(app_ready_time(tools, READY1S, ready_port, run)?);
        eprintln!("bench:   cold run {}/{} done", run + 1, opts.runs);
    }
    drop(site);

    // Warm: the daemon with a long drain; while `deploy v2` drains, the rollback goes back to
    // v1, which still runs: a pure nginx switch.
    let site = tools.site("5s")?;
    tools.deploy_untimed(&site, "v2")?;
    tools.deploy_untimed(&site, "v1")?;
    let daemon = Daemon::start(tools, &site)?;
    daemon.wait_converged(&site, "v1")?;
    // First, what `rollback --yes` does inside the drain window of v2: it must go back to
    // v1, which still runs. The history gains v2 only once v2's drain is over, so a rollback
    // that reads "current" from the history's head goes one version too far back.
    let forward = enter_drain(tools, &site, "v2")?;
    let history_then = fs::read_to_string(&site.history_file).unwrap_or_default();
    tools.setup(
        tools.ft(&site, &["rollback", "--yes", "--no-wait", "--by", "bench"]),
        "fieldtrack rollback --yes --no-wait",
    )?;
    let chosen = desired_image(&site).unwrap_or_default();
    finish_superseded(forward)?;
    daemon.wait_converged(&site, &chosen)?;
    let rollback_works = chosen == "v1";
    if !rollback_works {
        tools.deploy_untimed(&site, "v1")?;
        daemon.wait_converged(&site, "v1")?;
    }
    let warm_command: &[&str] = if rollback_works {
        &["rollback", "--yes", "--by", "bench"]
    } else {
        &[
            "deploy",
            "v1",
            "--by",
            "bench",
            "--note",
            "rollback by hand",
        ]
    };
    let mut warm = Sample::default();
    let mut warm_exit = Sample::default();
    for run in 0..opts.runs {
        let forward = enter_drain(tools, &site, "v2")?;
        let t = timed(&site, "v1", tools.ft(&site, warm_command), "warm rollback")?;
        warm.push(t.served);
        warm_exit.push(t.exited);
        finish_superseded(forward)?;
        daemon.wait_converged(&site, "v1")?;
        eprintln!("bench:   warm run {}/{} done", run + 1, opts.runs);
    }
    let warm_how = if rollback_works {
        "`fieldtrack rollback --yes`".to_string()
    } else {
        "`fieldtrack deploy v1` (the runbook's rollback by hand)".to_string()
    };
    let rollback_note = if rollback_works {
        "`rollback --yes` inside the drain window of v2 went back to v1 (still running): a pure nginx switch.".to_string()
    } else {
        format!(
            "**`rollback --yes` inside the drain window of v2 (v1 still running) wrote `{chosen}` to the desired file instead of v1**: it takes \"current\" from the history's head ({}), and the history gains v2 only after v2's drain. The warm figure therefore uses {warm_how}.",
            history_then.lines().collect::<Vec<_>>().join(", ")
        )
    };
    daemon.stop()?;
    drop(site);

    let mut s = Section::new(
        "b. Rollback latency: command start until nginx serves the previous version",
        &[
            "rollback",
            "fieldtrack",
            "app's own ready time",
            "over ready time",
            "target",
        ],
    );
    for (row, app, cold, ready) in [
        (
            "cold, v* (previous color stopped: starts a container)",
            "v*",
            &cold_instant,
            &ready_instant,
        ),
        ("cold, ready1s", "ready1s", &cold_ready, &ready_ready),
    ] {
        let over = cold.median() - ready.median();
        s.row(vec![
            row.into(),
            cold.show(),
            ready.show(),
            secs(over),
            format!("within 0.3 s of ready: {}", verdict(over <= 0.3)),
        ]);
        report.targets.push(Target {
            target: format!("cold rollback within 0.3 s of the app's own ready time ({app})"),
            measured: format!(
                "+{} ({} against {})",
                secs(over),
                secs(cold.median()),
                secs(ready.median())
            ),
            met: over <= 0.3,
        });
    }
    s.row(vec![
        "warm, v* (inside the 5 s drain, daemon: a pure nginx switch)".into(),
        warm.show(),
        "-".into(),
        "-".into(),
        format!("under 0.15 s: {}", verdict(warm.median() < 0.15)),
    ]);
    s.notes.push(format!(
        "cold: `fieldtrack rollback --yes` in-process, rollout.drain 0s. App's own ready time: Docker API create + start of the same image, then GET /health on the published port every 10 ms until 200 (no fieldtrack). warm: daemon running, rollout.drain 5s, {warm_how} while `deploy v2` drains (v1 still running); the command exits after its own drain, {} after its start.",
        warm_exit.show()
    ));
    s.notes.push(rollback_note);
    report.targets.push(Target {
        target: "warm rollback under 0.15 s".into(),
        measured: secs(warm.median()),
        met: warm.median() < 0.15,
    });
    report.sections.push(s);
    Ok(())
}

/// Starts `fieldtrack deploy TAG` through the daemon and returns once nginx serves it and
/// the daemon is in that deployment's drain (the old color still running).
fn enter_drain(tools: &Tools, site: &Site, tag: &str) -> Result<Child> {
    let mut child = tools
        .deploy(site, tag)
        .spawn()
        .map_err(|e| format!("cannot start fieldtrack deploy {tag}: {e}"))?;
    let deadline = Instant::now() + COMMAND_LIMIT;
    loop {
        let (_, status) = Status::read(site);
        if status.desired.as_deref() == Some(tag)
            && status.step.as_deref() == Some("draining")
            && version(site.nginx_addr()).as_deref() == Some(tag)
        {
            // nginx's old workers answer for about 100 ms after a reload: let them go, so
            // the rollback starts from a clean switch.
            thread::sleep(Duration::from_millis(300));
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "fieldtrack deploy {tag} ended ({status}) before its drain"
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("fieldtrack deploy {tag} never reached its drain"));
        }
        thread::sleep(POLL);
    }
}

/// Waits for a `deploy` whose generation was superseded (it exits 1 saying so).
fn finish_superseded(mut child: Child) -> Result<()> {
    wait_child(&mut child, COMMAND_LIMIT, "the superseded deploy").map(|_| ())
}

/// Creates and starts the image through the Docker API (as fieldtrack does), publishes it on
/// `port`, and returns how long until its /health answers 200. The container is removed.
fn app_ready_time(tools: &Tools, tag: &str, port: u16, run: usize) -> Result<Duration> {
    let name = format!("fieldtrack-bench-ready-{}-{run}-{tag}", std::process::id());
    let image = tools.bed.image(tag);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    let result = (|| {
        tools
            .docker
            .run(&name, &image, 8080, port, &[("fieldtrack.bench", "ready")])
            .map_err(|e| e.to_string())?;
        loop {
            if matches!(
                util::http_get(addr, "/health", Duration::from_secs(1)),
                Ok((200, _))
            ) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("{tag} never answered /health on port {port}"));
            }
            thread::sleep(POLL);
        }
    })();
    let _ = tools.docker.remove(&name);
    result
}
