//! The canary as recorded state, against the real Docker engine, registry and nginx, driven
//! through the `fieldtrack` binary: a daemon killed inside a step resumes that step with the
//! time it had already spent in it (status.json's `step_started` and `step_ends` unchanged)
//! and never goes back a step; a promote meant for a step that has ended, whether it arrives
//! under the running daemon or waited while the daemon was down, never ends the step after
//! it; and what skips the steps is a fact (the image served before: it is in the history),
//! never the desired file's free-text note.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::canary::*;
use crate::common::daemon::DAEMON_WAIT;
use crate::common::*;
use fieldtrack_testbed::Site;

/// A light load: enough requests that a 10% step reaches a small `min_requests` within its
/// pause, little enough for a machine shared by other tests.
const THREADS: usize = 2;
const GAP: Duration = Duration::from_millis(5);

/// Two manual steps: only a promote for the step running ends it.
const TWO_MANUAL_STEPS: &str =
    r#"[{ weight = 10, pause = "manual" }, { weight = 50, pause = "manual" }]"#;

/// A site of its own whose `[canary]` has `steps` (judged on `min_requests` canary
/// requests, latency left out: the two versions are the same program).
fn canary_site(steps: &str, min_requests: u64) -> Site {
    let mut site = quiet_site();
    set_canary(&mut site, steps, min_requests, 50.0);
    site
}

/// The desired file naming TAG with a note, or none.
fn desired_with_note(tag: &str, note: Option<&str>) -> String {
    match note {
        Some(note) => format!("{}note = {}\n", desired_text(tag), toml_str(note)),
        None => desired_text(tag),
    }
}

/// Watches status.json's writer (its pid) and its `canary`: what a daemon started again
/// shows is told apart from what the killed one left.
fn watch_writer_canary(site: &Site) -> Watch<(u64, serde_json::Value)> {
    let path = site.state_dir.join("status.json");
    Watch::start(move || {
        let status: serde_json::Value = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        Some((status["pid"].as_u64()?, status["canary"].clone()))
    })
}

/// Waits until status.json is written by the daemon `pid` and shows a canary step; that
/// `canary`.
#[track_caller]
fn first_canary_of(site: &Site, daemon: &Daemon) -> serde_json::Value {
    let pid = daemon.pid() as u64;
    wait_for_or(
        DAEMON_WAIT,
        "a canary step in status.json written by the restarted daemon",
        || {
            let status = status_opt(site)?;
            (status["pid"].as_u64() == Some(pid) && !status["canary"].is_null())
                .then(|| status["canary"].clone())
        },
        || daemon.report(site),
    )
}

/// The canary steps (1-based) the daemon `pid` showed, each once in the order shown.
fn steps_shown_by(seen: &[(Instant, (u64, serde_json::Value))], pid: u64) -> Vec<u64> {
    let mut steps: Vec<u64> = Vec::new();
    for (_, (writer, canary)) in seen {
        if let Some(step) = canary["step"].as_u64().filter(|_| *writer == pid) {
            if steps.last() != Some(&step) {
                steps.push(step);
            }
        }
    }
    steps
}

/// The canary_step records of TAG's attempts.
fn step_records(site: &Site, tag: &str) -> Vec<serde_json::Value> {
    audit_of(site, "canary_step")
        .into_iter()
        .filter(|r| r["image"] == tag)
        .collect()
}

/// TAG's canary_step records of step `step` of `steps`, as the audit names it ("canary step
/// N of M (W%) passed: ...").
fn records_of_step(site: &Site, tag: &str, step: u64, steps: u64) -> Vec<serde_json::Value> {
    let name = format!("canary step {step} of {steps} ");
    step_records(site, tag)
        .into_iter()
        .filter(|r| r["message"].as_str().is_some_and(|m| m.starts_with(&name)))
        .collect()
}

/// Where `fieldtrack promote` leaves its request: beside the desired file.
fn promote_file(site: &Site) -> PathBuf {
    site.desired_file
        .parent()
        .expect("the desired file is in a folder")
        .join(".fieldtrack-promote")
}

/// Writes a promote request for `generation`'s step `step` as `fieldtrack promote` does (a
/// temp file renamed into place), whatever step runs now.
fn request_promote(site: &Site, generation: &str, step: u64) {
    let file = promote_file(site);
    let temp = file.with_extension("tmp-test");
    write_new(
        &temp,
        format!("generation = {}\nstep = {step}\n", toml_str(generation)),
    );
    fs::rename(&temp, &file).expect("the promote request is put in place");
}

/// Waits until the daemon took the promote request (a request is read once and removed).
#[track_caller]
fn request_taken(site: &Site, daemon: &Daemon) {
    let file = promote_file(site);
    daemon.wait_until(site, "the promote request to be taken", || !file.exists());
}

/// status.json's desired generation.
fn generation(site: &Site) -> String {
    status(site)["generation"]
        .as_str()
        .expect("status.json names the generation")
        .to_string()
}

/// Under the daemon, a canary of v2 on two manual steps brought to step 2 by a promote for
/// step 1: step 2's `canary` in status.json.
#[track_caller]
fn canary_at_step_2(site: &Site) -> serde_json::Value {
    write_by_mv(site, "desired.toml.tmp", &desired_text("v2"));
    let step1 = wait_canary(site, 1, 0);
    assert_eq!(step1["image"], "v2", "{step1:#}");
    request_promote(site, &generation(site), 1);
    let step2 = wait_canary(site, 2, 0);
    assert_eq!(step2["weight"], 50, "{step2:#}");
    assert!(step2["step_ends"].is_null(), "a manual step: {step2:#}");
    step2
}

/// For `hold`, status.json goes on showing the step `step` (the same one: it started when
/// it did), nothing else.
#[track_caller]
fn step_stays(site: &Site, daemon: &Daemon, step: &serde_json::Value, hold: Duration) {
    let until = Instant::now() + hold;
    while Instant::now() < until {
        let now = status(site)["canary"].clone();
        assert!(
            now["step"] == step["step"] && now["step_started"] == step["step_started"],
            "step {} stays, it started at {}; status.json shows {now:#}\n{}",
            step["step"],
            step["step_started"],
            daemon.report(site)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Where `cargo test` keeps its outputs (the lead pastes the status from there).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target tmp dir is in the target dir")
        .to_path_buf()
}

#[test]
fn a_daemon_killed_inside_step_2_of_3_resumes_step_2_with_its_time_spent_then_step_3_then_all_traffic(
) {
    // Step 2 is long enough that, killed a second into it, it still has most of its time
    // when a daemon started again on a busy machine first shows it.
    let site = canary_site(
        r#"[{ weight = 10, pause = "5s" }, { weight = 30, pause = "15s" }, { weight = 50, pause = "5s" }]"#,
        5,
    );
    let daemon = Daemon::on(&site, "v1");
    let load = Load::start(&site, "/version", THREADS, GAP);

    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    wait_canary(&site, 2, 0);
    thread::sleep(Duration::from_secs(1));
    daemon.kill();
    let killed = status(&site)["canary"].clone();
    assert_eq!(killed["step"], 2, "killed inside step 2: {killed:#}");
    assert!(killed["step_ends"].is_string(), "{killed:#}");
    let left = sorted(servers(&site));
    assert!(
        left.len() == 2
            && left.iter().any(|l| l.ends_with(" weight=7;"))
            && left.iter().any(|l| l.ends_with(" weight=3;")),
        "killed inside step 2, nginx stays on its weights: {left:?}"
    );

    let canaries = watch_writer_canary(&site);
    let upstreams = watch_servers(&site);
    let daemon = Daemon::start(&site, &[]);
    let resumed = first_canary_of(&site, &daemon);
    assert_eq!(
        resumed["step"], 2,
        "the restarted daemon resumes step 2: {resumed:#}\n--- before the kill\n{killed:#}"
    );
    assert_eq!(
        (&resumed["step_started"], &resumed["step_ends"]),
        (&killed["step_started"], &killed["step_ends"]),
        "step 2 goes on with the time it had spent: {resumed:#}\n--- before the kill\n{killed:#}"
    );
    let shown = ft(&site, &["status"]);
    shown.expect_code(0);
    assert!(
        shown.stdout.contains("step 2 of 3"),
        "status shows step 2 after the restart:\n{}",
        shown.stdout
    );
    let saved = target_dir().join("canary-resume-status.txt");
    fs::write(&saved, &shown.stdout).expect("the status text is saved");
    eprintln!(
        "--- fieldtrack status right after the restart (saved to {})\n{}",
        saved.display(),
        shown.stdout
    );

    daemon.wait_converged(&site, "v2");
    let seen = canaries.stop();
    let upstreams = upstreams.stop();
    let answers = load.stop();

    assert_eq!(
        steps_shown_by(&seen, daemon.pid() as u64),
        vec![2, 3],
        "after the restart step 2 then step 3, never step 1: {seen:#?}"
    );
    let step1_weights: Vec<_> = upstreams
        .iter()
        // Step 1's 10%: 9 to 1 (`plan::canary_weights`, one server a side).
        .filter(|(_, s)| s.iter().any(|l| l.ends_with(" weight=9;")))
        .collect();
    assert!(
        step1_weights.is_empty(),
        "nginx never went back to step 1's weights: {upstreams:?}"
    );
    assert!(!upstream(&site).contains("weight="), "{}", upstream(&site));
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_eq!(history(&site), "v2\nv1\n");
    assert!(status(&site)["canary"].is_null());
    for step in 1..=3 {
        let records = records_of_step(&site, "v2", step, 3);
        assert_eq!(
            records.len(),
            1,
            "one audit record of step {step}: {:#?}",
            step_records(&site, "v2")
        );
        assert_eq!(records[0]["outcome"], "succeeded", "{:#}", records[0]);
    }
    assert_eq!(step_records(&site, "v2").len(), 3);
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "no request failed through the kill and the restart: {failed:?}"
    );
}

#[test]
fn a_promote_for_step_1_taken_once_step_2_has_begun_leaves_the_manual_step_2_running() {
    let site = canary_site(TWO_MANUAL_STEPS, 1000);
    let daemon = Daemon::on(&site, "v1");
    let step2 = canary_at_step_2(&site);

    // Sent as step 1 ended by itself, read once step 2 had begun.
    request_promote(&site, &generation(&site), 1);
    request_taken(&site, &daemon);
    wait_for_or(
        DAEMON_WAIT,
        "the daemon to log that it ignored the promote for step 1",
        || {
            daemon
                .log()
                .lines()
                .any(|l| l.contains("promote") && l.contains("ignored"))
                .then_some(())
        },
        || daemon.report(&site),
    );
    step_stays(&site, &daemon, &step2, Duration::from_secs(5));

    request_promote(&site, &generation(&site), 2);
    daemon.wait_converged(&site, "v2");
    assert_eq!(history(&site), "v2\nv1\n");
    let records = step_records(&site, "v2");
    assert_eq!(records.len(), 2, "one record a step: {records:#?}");
    for record in &records {
        assert_eq!(record["outcome"], "succeeded", "{record:#}");
    }
}

#[test]
fn a_promote_for_step_1_written_while_the_daemon_was_down_inside_step_2_leaves_step_2_running() {
    let site = canary_site(TWO_MANUAL_STEPS, 1000);
    let daemon = Daemon::on(&site, "v1");
    let step2 = canary_at_step_2(&site);
    let generation = generation(&site);
    daemon.kill();
    request_promote(&site, &generation, 1);

    let canaries = watch_writer_canary(&site);
    let daemon = Daemon::start(&site, &[]);
    let resumed = first_canary_of(&site, &daemon);
    assert_eq!(
        (&resumed["step"], &resumed["step_started"]),
        (&step2["step"], &step2["step_started"]),
        "the restarted daemon resumes step 2: {resumed:#}\n--- before the kill\n{step2:#}"
    );
    request_taken(&site, &daemon);
    step_stays(&site, &daemon, &step2, Duration::from_secs(5));
    let seen = canaries.stop();
    assert_eq!(
        steps_shown_by(&seen, daemon.pid() as u64),
        vec![2],
        "after the restart step 2 alone, never step 1: {seen:#?}"
    );

    request_promote(&site, &generation, 2);
    daemon.wait_converged(&site, "v2");
    assert_eq!(history(&site), "v2\nv1\n");
    let records = step_records(&site, "v2");
    assert_eq!(
        records.len(),
        2,
        "step 1 passed once, step 2 once: {records:#?}"
    );
}

#[test]
fn a_new_image_goes_through_the_canary_steps_whatever_its_note_says() {
    let site = canary_site(r#"[{ weight = 10, pause = "2s" }]"#, 5);
    let daemon = Daemon::on(&site, "v1");
    let load = Load::start(&site, "/version", THREADS, GAP);

    // Notes that a rollback, an auto-rollback or an operator would write: none of these
    // images ever served here.
    for (tag, note) in [
        ("v2", "auto-rollback: x"),
        ("v3", "rollback from v2 to v1"),
        ("v4", "rollback to v1"),
    ] {
        let canaries = watch_canary(&site);
        write_by_mv(
            &site,
            "desired.toml.tmp",
            &desired_with_note(tag, Some(note)),
        );
        daemon.wait_converged(&site, tag);
        let seen = canaries.stop();
        assert!(
            seen.iter()
                .any(|(_, c)| c["image"] == tag && c["step"] == 1),
            "status showed {tag}'s canary step (note {note:?}): {seen:?}"
        );
        let records = step_records(&site, tag);
        assert_eq!(
            records.len(),
            1,
            "{tag} (note {note:?}) went through its step: {records:#?}"
        );
        assert_eq!(records[0]["outcome"], "succeeded", "{:#}", records[0]);
    }
    let answers = load.stop();
    assert_eq!(history(&site), "v4\nv3\nv2\nv1\n");
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(failed.is_empty(), "no request failed: {failed:?}");
}

#[test]
fn going_back_by_hand_to_an_image_of_the_history_skips_the_canary_steps_whatever_the_note() {
    let site = canary_site(r#"[{ weight = 10, pause = "2s" }]"#, 5);
    let daemon = Daemon::on(&site, "v1");
    let load = Load::start(&site, "/version", THREADS, GAP);
    write_by_mv(&site, "desired.toml.tmp", &desired_text("v2"));
    daemon.wait_converged(&site, "v2");
    assert_eq!(
        step_records(&site, "v2").len(),
        1,
        "a new image goes through the steps here"
    );

    // Back to v1, then forward again to v2: both served before, both in the history.
    for (tag, note, history_after) in [
        ("v1", Some("back to v1 please"), "v1\nv2\n"),
        ("v2", None, "v2\nv1\n"),
    ] {
        let records_before = audit_of(&site, "canary_step").len();
        let upstreams = watch_servers(&site);
        let canaries = watch_canary(&site);
        write_by_mv(&site, "desired.toml.tmp", &desired_with_note(tag, note));
        daemon.wait_converged(&site, tag);
        let upstreams = upstreams.stop();
        let seen = canaries.stop();

        assert!(
            upstreams
                .iter()
                .all(|(_, s)| s.len() == 1 && !s[0].contains("weight=")),
            "back to {tag} (note {note:?}) nginx switched at once, never sharing the traffic: {upstreams:?}"
        );
        assert!(
            seen.iter().all(|(_, c)| c.is_null()),
            "back to {tag} (note {note:?}) status never showed a canary step: {seen:?}"
        );
        let records = audit_of(&site, "canary_step");
        assert_eq!(
            records.len(),
            records_before,
            "no canary step for {tag} (note {note:?}): {:#?}",
            &records[records_before..]
        );
        assert_eq!(history(&site), history_after);
    }
    let answers = load.stop();
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(failed.is_empty(), "no request failed: {failed:?}");
}
