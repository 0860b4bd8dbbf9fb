//! What `deploy` shows while it waits, against the real engine, registry and nginx: step
//! lines, the same whether the pass runs in the process or in a daemon it follows, ending
//! with how it ended; log lines only when asked for.

use crate::common::*;
use fieldtrack_testbed::Site;

#[test]
fn a_first_deploy_without_a_daemon_reads_as_step_lines_not_log_lines() {
    let site = Site::new();

    let run = ft(&site, &["deploy", "v1"]);

    run.expect_code(0);
    no_log_lines(&run.stderr);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(
        lines[0].starts_with("desired: v1 (generation "),
        "{}",
        run.stderr
    );
    assert_eq!(
        shapes(&run.stderr),
        [
            "progressing: pulling",
            "progressing: starting",
            "progressing: health",
            "progressing: health passed",
            "progressing: switching",
            "progressing: switched",
            "progressing: draining",
            "progressing: cleanup",
            "converged",
        ],
        "{}",
        run.stderr
    );
    let color = live_color(&site);
    let port = if color == "blue" {
        site.blue_port
    } else {
        site.green_port
    };
    assert_eq!(
        lines.last().copied(),
        Some(
            format!(
                "converged: v1 live on {color} ({}, 127.0.0.1:{port})",
                container_name(&site, color)
            )
            .as_str()
        ),
        "{}",
        run.stderr
    );

    // Asked for, the log lines come too.
    let run = ft(&site, &["deploy", "v2", "-v"]);
    run.expect_code(0);
    assert!(run.stderr.contains(" INFO "), "{}", run.stderr);
    assert!(
        shapes(&run.stderr).contains(&"progressing: health".to_string()),
        "{}",
        run.stderr
    );
}

#[test]
fn deploy_following_a_daemon_shows_the_same_step_lines_as_without_one() {
    let alone = Site::new();
    deploy_ok(&alone, "v1");
    // ready1s listens after a second: its health step lasts long enough to be seen.
    let in_process = ft(&alone, &["deploy", "ready1s"]);
    in_process.expect_code(0);

    let site = Site::new();
    let _daemon = Daemon::on(&site, "v1");
    let followed = ft(&site, &["deploy", "ready1s"]);
    followed.expect_code(0);

    assert!(
        followed.stderr.contains("following its progress"),
        "{}",
        followed.stderr
    );
    no_log_lines(&followed.stderr);
    let (ours, daemons) = (shapes(&in_process.stderr), shapes(&followed.stderr));
    // Polling status.json may miss a step shorter than its interval, never add or reorder one.
    let mut rest = ours.iter();
    for line in &daemons {
        assert!(
            rest.any(|l| l == line),
            "{line:?} is not in the same order in {ours:#?}\n--- followed\n{}",
            followed.stderr
        );
    }
    for run in [&in_process, &followed] {
        assert!(
            run.stderr.lines().any(|l| l == "progressing: health"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("converged: ready1s live on ")),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_failed_deploy_shows_the_step_the_reason_and_the_candidates_last_lines() {
    let mut alone = Site::new();
    fast_health(&mut alone);
    deploy_ok(&alone, "v1");
    let in_process = ft(&alone, &["deploy", "unhealthy"]);

    let mut site = Site::new();
    fast_health(&mut site);
    let _daemon = Daemon::on(&site, "v1");
    let followed = ft(&site, &["deploy", "unhealthy"]);

    for run in [&in_process, &followed] {
        run.expect_code(1);
        no_log_lines(&run.stderr);
        let lines: Vec<&str> = run.stderr.lines().collect();
        let failed = lines.iter().position(|l| *l == "failed at health");
        let error = lines.iter().position(|l| {
            l.starts_with("fieldtrack: candidate ") && l.contains("did not become healthy")
        });
        assert!(
            failed.is_some() && error == failed.map(|i| i + 1),
            "the step, then the reason once:\n{}",
            run.stderr
        );
        assert!(
            run.stderr.contains("Last log lines:\ntestapp unhealthy"),
            "the candidate's own lines:\n{}",
            run.stderr
        );
        assert_eq!(
            run.stderr.matches("did not become healthy").count(),
            1,
            "{}",
            run.stderr
        );
    }
}

/// The progress lines with what varies (probes, ports, names) cut off.
fn shapes(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("progressing: ") || l.starts_with("converged"))
        .map(|l| {
            let l = l.split(" (").next().unwrap_or(l);
            let l = l.split(" to ").next().unwrap_or(l);
            l.split(':')
                .take(if l.starts_with("converged") { 1 } else { 2 })
                .collect::<Vec<_>>()
                .join(":")
        })
        .collect()
}

/// No timestamped log line (`2026-...Z  INFO ...`) reached stderr.
#[track_caller]
fn no_log_lines(stderr: &str) {
    for line in stderr.lines() {
        let timestamped = line.len() > 10
            && line.as_bytes()[4] == b'-'
            && line[..4].bytes().all(|b| b.is_ascii_digit());
        assert!(
            !timestamped && !line.contains(" INFO "),
            "a log line: {line:?}\n{stderr}"
        );
    }
}
