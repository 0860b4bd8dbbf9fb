//! The operator's commands (`rollback`, `history`, `plan`, `status`, `deploy`'s defaults and
//! the compat scripts) against the real Docker engine, registry and nginx, driven through
//! the `fieldtrack` binary with no daemon running: `deploy` and `rollback` reconcile
//! in-process. What nginx serves and the bytes of the files fieldtrack owns are the
//! observations.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use fieldtrack_testbed::{Bed, Site};

#[test]
fn rollback_screen_is_the_seeds_and_no_changes_nothing() {
    let site = Site::new();
    for tag in ["v1", "v2", "v3", "v4", "v5"] {
        deploy_ok(&site, tag);
    }
    let before = World::of(&site);

    let run = ft_stdin(&site, &["rollback"], b"no\n", CANCEL_WAIT);

    run.expect_code(1);
    let screen = "Current deployment : v5
Previous deployment: v4

Deployment history:
  1. v5 (current)
  2. v4 ← rollback target
  3. v3
  4. v2
  5. v1

⚠️  WARNING: This will redeploy the previous version.
Current production will be replaced with: v4

Continue with rollback? (yes/no):";
    assert_eq!(
        run.stdout.trim_end(),
        screen,
        "stdout is the seed's screen and nothing else"
    );
    assert!(
        run.stderr.contains("cancelled"),
        "stderr says it was cancelled:\n{}",
        run.stderr
    );
    assert_eq!(
        World::of(&site),
        before,
        "a cancelled rollback changed files"
    );
    assert_eq!(served(&site).as_deref(), Some("v5"));
}

#[test]
fn rollback_from_a_pipe_proceeds_only_on_yes_and_never_hangs() {
    let site = Site::new();
    for tag in ["v1", "v2", "v3", "v4", "v5"] {
        deploy_ok(&site, tag);
    }
    let before = World::of(&site);

    for (answer, input) in [
        ("no", Some(&b"no\n"[..])),
        ("end of input", Some(b"")),
        ("/dev/null", None),
        ("YES", Some(b"YES\n")),
        ("y", Some(b"y\n")),
        ("yess", Some(b"yess\n")),
    ] {
        let run = run_bounded(command(&site, &["rollback"]), input, CANCEL_WAIT);

        assert_eq!(
            run.code, 1,
            "{answer}: a cancelled rollback exits 1\n{}",
            run.stderr
        );
        assert!(
            run.stdout.contains("Continue with rollback? (yes/no):"),
            "{answer}: the question was asked:\n{}",
            run.stdout
        );
        assert!(
            run.stderr.contains("cancelled"),
            "{answer}: stderr says it was cancelled:\n{}",
            run.stderr
        );
        assert!(
            run.duration < Duration::from_secs(10),
            "{answer}: cancelling took {:?}",
            run.duration
        );
        assert_eq!(World::of(&site), before, "{answer} changed something");
        assert_eq!(served(&site).as_deref(), Some("v5"), "{answer}");
    }

    let run = ft_stdin(&site, &["rollback"], b"yes\n", DEPLOY_WAIT);

    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v4"));
    assert_eq!(history(&site), "v4\nv5\nv3\nv2\nv1\n");
    assert_rolled_back_to(&site, "v4");
}

#[test]
fn rollback_yes_skips_the_question_and_to_picks_any_entry() {
    let site = Site::new();
    for tag in ["v1", "v2", "v3"] {
        deploy_ok(&site, tag);
    }
    let before = World::of(&site);

    for to in ["1", "0", "9", "4"] {
        let run = ft(&site, &["rollback", "--yes", "--to", to]);

        assert_eq!(
            run.code, 2,
            "--to {to} is bad usage\n--- stdout\n{}\n--- stderr\n{}",
            run.stdout, run.stderr
        );
        assert!(
            run.stderr.contains(&format!("--to {to}")),
            "the error names the value --to {to}:\n{}",
            run.stderr
        );
        assert_eq!(World::of(&site), before, "--to {to} changed something");
    }
    assert_eq!(served(&site).as_deref(), Some("v3"));

    // Stdin is /dev/null here: a question would be answered by end of input and cancel.
    let run = ft(&site, &["rollback", "--yes"]);

    run.expect_code(0);
    assert!(
        !run.stdout.contains("Continue with rollback?"),
        "--yes asks nothing:\n{}",
        run.stdout
    );
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_eq!(history(&site), "v2\nv3\nv1\n");
    assert_rolled_back_to(&site, "v2");

    let run = ft(&site, &["rollback", "--yes", "--to", "3"]);

    run.expect_code(0);
    assert!(
        run.stdout.contains("  3. v1 ← rollback target\n"),
        "entry 3 is the target:\n{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("Current production will be replaced with: v1\n"),
        "{}",
        run.stdout
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(history(&site), "v1\nv2\nv3\n");
    assert_rolled_back_to(&site, "v1");
}

#[test]
fn rollback_without_history_says_so_and_changes_nothing() {
    let site = Site::new();
    let history_file = site.history_file.display().to_string();

    for (case, content) in [("missing", None), ("empty", Some(""))] {
        if let Some(content) = content {
            fs::write(&site.history_file, content).unwrap();
        }
        let before = World::of(&site);

        let run = ft(&site, &["rollback", "--yes"]);

        run.expect_code(1);
        for needle in [
            "No deployment history found.",
            history_file.as_str(),
            "Deploy at least once before attempting rollback.",
        ] {
            assert!(
                run.stderr.contains(needle),
                "{case} history: stderr has {needle:?}:\n{}",
                run.stderr
            );
        }
        assert_eq!(World::of(&site), before, "{case} history");
        assert!(
            !site.desired_file.exists(),
            "{case} history: no desired file"
        );
    }
    assert!(site.containers().is_empty());
}

#[test]
fn rollback_with_one_deployment_is_refused_and_changes_nothing() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let before = World::of(&site);

    let run = ft(&site, &["rollback", "--yes"]);

    run.expect_code(1);
    for needle in [
        "Insufficient deployment history.",
        "Current deployment: v1",
        "Need at least 2 deployments to rollback.",
    ] {
        assert!(
            run.stderr.contains(needle),
            "stderr has {needle:?}:\n{}",
            run.stderr
        );
    }
    assert_eq!(World::of(&site), before);
    assert_eq!(served(&site).as_deref(), Some("v1"));
}

#[test]
fn rollback_writes_who_and_why_into_the_desired_file_and_moves_the_target_to_the_front() {
    let site = Site::new();
    for tag in ["v1", "v2", "v3"] {
        deploy_ok(&site, tag);
    }

    ft(&site, &["rollback", "--yes", "--by", "carol"]).expect_code(0);

    let text = desired(&site).expect("rollback wrote the desired file");
    let file: toml::Table = toml::from_str(&text).expect("the desired file is TOML");
    assert_eq!(file["image"].as_str(), Some("v2"), "{text}");
    assert_eq!(file["by"].as_str(), Some("carol"), "{text}");
    let note = file["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("rollback") && note.contains("from v3"),
        "the note says it is a rollback from v3: {text}"
    );
    assert_eq!(
        history(&site),
        "v2\nv3\nv1\n",
        "no duplicates, target first"
    );
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_rolled_back_to(&site, "v2");
    let audit = audit(&site);
    let last = audit.last().expect("the rollback is audited");
    assert_eq!(last["outcome"], "succeeded", "{last:#}");
    assert_eq!(last["image"], "v2", "{last:#}");
    assert_eq!(last["previous"], "v3", "{last:#}");
    assert_eq!(last["by"], "carol", "{last:#}");
    assert_eq!(last["note"].as_str(), Some(note), "{last:#}");

    // Without --by, the operator's user name goes in.
    let run = command(&site, &["rollback", "--yes"])
        .env_remove("CI")
        .env_remove("LOGNAME")
        .env("USER", "dave")
        .output()
        .expect("the fieldtrack binary runs");
    assert!(run.status.success(), "{run:?}");
    let text = desired(&site).unwrap();
    let file: toml::Table = toml::from_str(&text).expect("the desired file is TOML");
    assert_eq!(file["image"].as_str(), Some("v3"), "{text}");
    assert_eq!(file["by"].as_str(), Some("dave"), "{text}");
    assert_eq!(history(&site), "v3\nv2\nv1\n");
}

#[test]
fn rollback_brings_back_the_recorded_digest_when_the_tag_moved() {
    let site = Site::new();
    let alias = format!("pin-{}", site.app);
    Bed::shared()
        .push_alias("v1", &alias)
        .expect("the alias is pushed");
    deploy_ok_as(&site, &alias, "v1");
    let recorded = status(&site)["digest"]
        .as_str()
        .expect("status.json has the live digest")
        .to_string();
    assert!(recorded.starts_with("sha256:"), "{recorded}");
    let audited = audit(&site)
        .into_iter()
        .find(|r| r["image"] == alias.as_str() && r["outcome"] == "succeeded")
        .expect("the first deploy is audited");
    assert_eq!(audited["digest"], recorded.as_str(), "{audited:#}");
    deploy_ok(&site, "v2");

    // The tag now names v3's image, and no local copy of it is left to hide the move.
    Bed::shared()
        .push_alias("v3", &alias)
        .expect("the alias is moved");
    let _ = site.docker().args(["rmi", &site.image(&alias)]).output();

    let run = ft(&site, &["rollback", "--yes"]);

    run.expect_code(0);
    assert_eq!(
        served(&site).as_deref(),
        Some("v1"),
        "the recorded digest came back, not what the tag names now:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("the tag {alias} now points to"))
            && run.stderr.contains(&recorded),
        "stderr says the tag moved and names the recorded digest:\n{}",
        run.stderr
    );
    let text = desired(&site).expect("rollback wrote the desired file");
    let file: toml::Table = toml::from_str(&text).expect("the desired file is TOML");
    assert_eq!(file["image"].as_str(), Some(alias.as_str()), "{text}");
    assert_eq!(
        file["digest"].as_str(),
        Some(recorded.as_str()),
        "the desired file pins the recorded digest:\n{text}"
    );
    assert_eq!(history(&site), format!("{alias}\nv2\n"));
    let run = ft(&site, &["history", "--json"]);
    run.expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).expect("history is JSON");
    assert_eq!(shown[0]["image"], alias.as_str(), "{shown:#}");
    assert_eq!(shown[0]["digest"], recorded.as_str(), "{shown:#}");
    let status = status(&site);
    assert_eq!(status["phase"], "converged", "{status:#}");
    assert_eq!(status["digest"], recorded.as_str(), "{status:#}");
}

#[test]
fn history_shows_when_how_and_by_whom_each_entry_came_and_marks_versions_rolled_back_from() {
    let site = Site::new();
    ft(
        &site,
        &["deploy", "v1", "--by", "ci", "--note", "first cut"],
    )
    .expect_code(0);
    ft(&site, &["deploy", "v2", "--by", "alice"]).expect_code(0);
    ft(&site, &["deploy", "v3", "--by", "bob", "--note", "bad one"]).expect_code(0);
    ft(&site, &["rollback", "--yes", "--by", "carol"]).expect_code(0);
    assert_eq!(history(&site), "v2\nv3\nv1\n");
    let audit = audit(&site);
    let deployed = |image: &str| {
        audit
            .iter()
            .rev()
            .find(|r| r["image"] == image && r["outcome"] == "succeeded")
            .unwrap_or_else(|| panic!("the audit log has {image}"))
            .clone()
    };
    // (image, trigger, rolled back from), current first.
    let expected = [
        ("v2", "rollback", false),
        ("v3", "cli", true),
        ("v1", "ci", false),
    ];

    let run = ft(&site, &["history"]);

    run.expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one line an entry:\n{}", run.stdout);
    for (i, (line, (image, trigger, bad))) in lines.iter().zip(expected).enumerate() {
        let record = deployed(image);
        let head = format!("{}. {image}", i + 1);
        assert!(line.trim_start().starts_with(&head), "{head:?} in {line:?}");
        assert_eq!(line.contains("(current)"), i == 0, "{line:?}");
        assert_eq!(line.contains("rolled back from"), bad, "{line:?}");
        assert!(line.contains(trigger), "{trigger} in {line:?}");
        for field in ["time", "digest", "by"] {
            let value = record[field]
                .as_str()
                .unwrap_or_else(|| panic!("the audit record of {image} has a {field}: {record:#}"));
            assert!(line.contains(value), "{field} {value:?} in {line:?}");
        }
        if let Some(note) = record["note"].as_str() {
            assert!(line.contains(note), "note {note:?} in {line:?}");
        }
    }
    assert!(lines[0].contains("carol"), "{}", lines[0]);
    assert!(lines[0].contains("rollback from v3"), "{}", lines[0]);

    let run = ft(&site, &["history", "--json"]);

    run.expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).expect("history is JSON");
    let entries = shown.as_array().expect("a list");
    assert_eq!(entries.len(), 3, "{shown:#}");
    for (i, (entry, (image, trigger, bad))) in entries.iter().zip(expected).enumerate() {
        let record = deployed(image);
        assert_eq!(entry["n"], i + 1, "{entry:#}");
        assert_eq!(entry["image"], image, "{entry:#}");
        assert_eq!(entry["current"], i == 0, "{entry:#}");
        assert_eq!(entry["deployed_at"], record["time"], "{entry:#}");
        assert_eq!(entry["digest"], record["digest"], "{entry:#}");
        assert_eq!(entry["by"], record["by"], "{entry:#}");
        assert_eq!(entry["note"], record["note"], "{entry:#}");
        assert_eq!(entry["trigger"], trigger, "{entry:#}");
        assert_eq!(entry["rolled_back_from"], bad, "{entry:#}");
    }
    assert_eq!(entries[0]["by"], "carol");
    assert!(
        entries[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("rollback") && n.contains("v3")),
        "{:#}",
        entries[0]
    );
    assert_eq!(entries[1]["note"], "bad one");
    assert_eq!(entries[2]["by"], "ci");
    assert_eq!(entries[2]["note"], "first cut");
}

#[test]
fn plan_shows_the_switch_as_an_upstream_diff_and_changes_nothing() {
    let site = Site::new();
    deploy_ok(&site, "v1");

    let run = ft(&site, &["plan"]);
    run.expect_code(0);
    assert!(
        run.stdout.to_lowercase().contains("in sync"),
        "{}",
        run.stdout
    );

    let old_port = upstream_port(&site);
    let new_color = idle_color(&site);
    let new_port = if new_color == "blue" {
        site.blue_port
    } else {
        site.green_port
    };
    ft(&site, &["deploy", "v2", "--no-wait"]).expect_code(0);
    let before = World::of(&site);

    let run = ft(&site, &["plan"]);

    run.expect_code(3);
    let action = run
        .stdout
        .lines()
        .find(|l| l.contains("deploy") && l.contains("v2"))
        .unwrap_or_else(|| panic!("the plan deploys v2:\n{}", run.stdout));
    assert!(action.contains(new_color), "into {new_color}: {action}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    let upstream_file = site.upstream_file.display().to_string();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("--- ") && l.contains(&upstream_file)),
        "a unified diff header names the upstream file:\n{}",
        run.stdout
    );
    assert!(
        lines.iter().any(|l| l.starts_with("+++ ")),
        "{}",
        run.stdout
    );
    assert!(lines.iter().any(|l| l.starts_with("@@ ")), "{}", run.stdout);
    let removed = format!("-    server 127.0.0.1:{old_port};");
    let added = format!("+    server 127.0.0.1:{new_port};");
    assert!(
        lines.contains(&removed.as_str()),
        "{removed}:\n{}",
        run.stdout
    );
    assert!(lines.contains(&added.as_str()), "{added}:\n{}", run.stdout);
    assert_eq!(World::of(&site), before, "plan changed something");
    assert_eq!(served(&site).as_deref(), Some("v1"));

    ft(&site, &["reconcile"]).expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v2"));
    ft(&site, &["plan"]).expect_code(0);
}

#[test]
fn status_shows_desired_live_phase_and_history_and_then_the_failure() {
    let mut site = Site::new();
    fast_health(&mut site);
    deploy_ok(&site, "v1");
    deploy_ok(&site, "v2");
    let color = live_color(&site);
    let container = container_name(&site, color);

    let run = ft(&site, &["status"]);

    run.expect_code(0);
    let field = |out: &str, name: &str| -> String {
        out.lines()
            .find_map(|l| {
                let (key, value) = l.split_once(':')?;
                (key.trim() == name).then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| panic!("status shows {name}:\n{out}"))
    };
    assert!(
        field(&run.stdout, "Desired").starts_with("v2 "),
        "{}",
        run.stdout
    );
    let live = field(&run.stdout, "Live");
    for part in [color, &site.image("v2"), &container] {
        assert!(live.contains(part), "{part} in Live: {live}");
    }
    let phase = field(&run.stdout, "Phase");
    assert!(phase.starts_with("converged"), "{phase}");
    let shown: serde_json::Value = {
        let run = ft(&site, &["status", "--json"]);
        run.expect_code(0);
        serde_json::from_str(&run.stdout).expect("status is JSON")
    };
    let since = shown["since"].as_str().expect("status --json has since");
    assert!(phase.contains(since), "since {since} in Phase: {phase}");
    assert_eq!(field(&run.stdout, "History"), "v2, v1");
    assert_eq!(shown["desired"], "v2");
    assert_eq!(shown["phase"], "converged");
    assert_eq!(shown["live"]["color"], color);
    assert_eq!(shown["live"]["image"], site.image("v2"));
    assert_eq!(shown["live"]["container"], container.as_str());
    assert_eq!(shown["message"], serde_json::Value::Null);
    assert_eq!(shown["history"], serde_json::json!(["v2", "v1"]));

    ft(&site, &["deploy", "unhealthy"]).expect_code(1);

    let run = ft(&site, &["status", "--json"]);
    run.expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).expect("status is JSON");
    assert_eq!(shown["desired"], "unhealthy", "{shown:#}");
    assert_eq!(shown["phase"], "failed", "{shown:#}");
    assert_eq!(shown["live"]["image"], site.image("v2"), "{shown:#}");
    let message = shown["message"].as_str().unwrap_or_default();
    assert!(message.contains("did not become healthy"), "{shown:#}");
    assert_ne!(
        shown["since"].as_str(),
        Some(since),
        "a new phase, a new since"
    );
    assert_eq!(shown["history"], serde_json::json!(["v2", "v1"]));

    let run = ft(&site, &["status"]);
    run.expect_code(0);
    assert!(
        field(&run.stdout, "Phase").starts_with("failed"),
        "{}",
        run.stdout
    );
    let first_line = message.lines().next().unwrap_or_default();
    assert_eq!(field(&run.stdout, "Message"), first_line, "{}", run.stdout);
    assert!(
        field(&run.stdout, "Live").contains(&site.image("v2")),
        "{}",
        run.stdout
    );
}

#[test]
fn deploy_without_by_records_the_user_or_ci() {
    let site = Site::new();
    let deploy_as = |tag: &str, env: &[(&str, &str)]| {
        let mut cmd = command(&site, &["deploy", tag]);
        cmd.env_remove("CI")
            .env_remove("LOGNAME")
            .env_remove("USER");
        for (key, value) in env {
            cmd.env(key, value);
        }
        let out = cmd.output().expect("the fieldtrack binary runs");
        assert!(out.status.success(), "deploy {tag}: {out:?}");
    };
    let recorded_by = |image: &str| {
        let text = desired(&site).expect("deploy wrote the desired file");
        let file: toml::Table = toml::from_str(&text).expect("the desired file is TOML");
        let audited = audit(&site)
            .into_iter()
            .rev()
            .find(|r| r["image"] == image)
            .unwrap_or_else(|| panic!("{image} is audited"));
        (
            file["by"].as_str().map(str::to_string),
            audited["by"].as_str().map(str::to_string),
        )
    };

    deploy_as("v1", &[("USER", "alice")]);
    assert_eq!(
        recorded_by("v1"),
        (Some("alice".into()), Some("alice".into()))
    );

    deploy_as("v2", &[("USER", "alice"), ("CI", "true")]);
    assert_eq!(recorded_by("v2"), (Some("ci".into()), Some("ci".into())));
    assert_eq!(served(&site).as_deref(), Some("v2"));
}

#[test]
fn compat_scripts_deploy_and_roll_back_through_fieldtrack() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compat");
    let script = |name: &str, args: &[&str]| {
        let mut cmd = Command::new(scripts.join(name));
        cmd.args(args)
            .current_dir(&site.dir)
            .env("FIELDTRACK", env!("CARGO_BIN_EXE_fieldtrack"))
            .env("FIELDTRACK_CONFIG", &site.config_path)
            .env_remove("DEPLOY_BY")
            .env_remove("FIELDTRACK_TEST_PAUSE_AT")
            .env_remove("FIELDTRACK_LOG");
        run_bounded(cmd, None, DEPLOY_WAIT)
    };

    script("deploy-bluegreen.sh", &["v2"]).expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_eq!(history(&site), "v2\nv1\n");
    let text = desired(&site).expect("the script wrote the desired file");
    assert!(text.contains("by = \"ci\""), "{text}");

    let before = World::of(&site);
    let run = script("deploy-bluegreen.sh", &[]);
    run.expect_code(2);
    assert!(run.stderr.contains("usage"), "{}", run.stderr);
    assert_eq!(World::of(&site), before);

    let run = script("rollback.sh", &["--yes"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("  2. v1 ← rollback target"),
        "the seed's screen:\n{}",
        run.stdout
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(history(&site), "v1\nv2\n");
    assert_rolled_back_to(&site, "v1");
}

#[test]

fn redeploying_the_image_a_rollback_brought_back_keeps_its_container() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    deploy_ok(&site, "v2");
    ft(&site, &["rollback", "--yes"]).expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    let live = container_name(&site, live_color(&site));
    let id = container_id(&site, &live);
    let upstream_before = upstream(&site);

    ft(&site, &["deploy", "v1", "--no-wait"]).expect_code(0);
    let run = ft(&site, &["plan"]);
    assert_eq!(
        run.code, 0,
        "v1 is live: nothing to do\n--- stdout\n{}",
        run.stdout
    );
    ft(&site, &["deploy", "v1"]).expect_code(0);

    assert_eq!(site.containers(), vec![live.clone()]);
    assert_eq!(
        container_id(&site, &live),
        id,
        "the live container was kept"
    );
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), "v1\nv2\n");
}

#[test]

fn plan_with_an_unusable_desired_file_writes_nothing() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    fs::write(&site.desired_file, "image = \"not a tag!\"\n").unwrap();
    let before = World::of(&site);

    let run = ft(&site, &["plan"]);

    run.expect_code(2);
    assert!(run.stderr.contains("not a tag!"), "{}", run.stderr);
    assert_eq!(World::of(&site), before, "plan changed something");
    assert_eq!(served(&site).as_deref(), Some("v1"));
}

// ---------------------------------------------------------------------------------------
// Helpers of this file.

/// Longest a cancelled rollback may take: it only reads files and one line of stdin.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// Longest a run that deploys may take before the test calls it hung.
const DEPLOY_WAIT: Duration = Duration::from_secs(180);

/// Like `assert_converged`, after a rollback: the live container may run the image by the
/// digest recorded for it (`repo:tag@sha256:…`), which is then the status's digest.
#[track_caller]
fn assert_rolled_back_to(site: &Site, tag: &str) {
    let status = status(site);
    assert_eq!(status["phase"], "converged", "{status:#}");
    assert_eq!(status["desired"], tag, "{status:#}");
    let live = &status["live"];
    let color = live_color(site);
    assert_eq!(live["color"], color, "{status:#}");
    assert_eq!(live["port"], upstream_port(site), "{status:#}");
    assert_eq!(live["container"], container_name(site, color), "{status:#}");
    let plain = site.image(tag);
    let pinned = format!(
        "{plain}@{}",
        status["digest"].as_str().unwrap_or("no digest")
    );
    let image = live["image"].as_str().unwrap_or_default();
    assert!(image == plain || image == pinned, "{status:#}");
    assert_eq!(
        site.containers(),
        vec![container_name(site, color)],
        "only the live color runs"
    );
}

/// `deploy TAG`, which must succeed, and nginx must then serve `version` (what the image
/// answers on `/version`, for a tag that is an alias of another).
#[track_caller]
fn deploy_ok_as(site: &Site, tag: &str, version: &str) {
    let run = ft(site, &["deploy", tag]);
    run.expect_code(0);
    assert_eq!(
        served(site).as_deref(),
        Some(version),
        "nginx serves {version} after deploy {tag}:\n{}",
        run.stderr
    );
}

/// `fieldtrack --config <site> ARGS...` with `input` on a pipe as its stdin (closed after
/// it), killed and failed when it runs longer than `limit`.
fn ft_stdin(site: &Site, args: &[&str], input: &[u8], limit: Duration) -> Run {
    run_bounded(command(site, args), Some(input), limit)
}

/// Runs `cmd` with `input` piped in (or /dev/null), collecting its output; a run longer
/// than `limit` is killed and fails the test, so a prompt that waits forever shows as such.
#[track_caller]
fn run_bounded(mut cmd: Command, input: Option<&[u8]>, limit: Duration) -> Run {
    let started = Instant::now();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the command starts");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // The child may exit before reading: a broken pipe is its answer, not ours to judge.
        let _ = stdin.write_all(input);
    }
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr is piped")));
    let code = loop {
        if let Some(status) = child.try_wait().expect("the child can be waited for") {
            break status.code().unwrap_or(-1);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} still ran after {limit:?} (hung?)\n--- stdout\n{}\n--- stderr\n{}",
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        code,
        stdout: stdout.join().expect("stdout is read"),
        stderr: stderr.join().expect("stderr is read"),
        duration: started.elapsed(),
    }
}

/// Everything a command that must change nothing could touch: production (the upstream
/// file, the history, the containers by engine id) and the other files fieldtrack owns, as
/// text so that a failure shows a readable diff.
#[derive(Debug, PartialEq, Eq)]
struct World {
    production: Production,
    desired: Option<String>,
    status: Option<String>,
    audit: Option<String>,
}

impl World {
    fn of(site: &Site) -> World {
        let text = |path: &Path| bytes(path).map(|b| String::from_utf8_lossy(&b).into_owned());
        World {
            production: Production::of(site),
            desired: text(&site.desired_file),
            status: text(&site.state_dir.join("status.json")),
            audit: text(&site.state_dir.join("audit.jsonl")),
        }
    }
}
