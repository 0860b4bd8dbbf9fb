//! Deployment hooks, against the real Docker engine and nginx, through the `fieldtrack`
//! binary: `pre_switch` runs before nginx moves, sees the deployment in its environment, and
//! a failing or hung one (killed at `hooks.hook_timeout`) keeps production as it was;
//! `post_deploy` runs after the switch and its failure is only reported.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use crate::common::*;
use fieldtrack_testbed::{procfs, Site};

#[test]
fn failing_pre_switch_hook_keeps_production_and_sees_the_deployment() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let (candidate_color, candidate_port) = idle(&site);
    let (upstream_before, history_before) = (upstream(&site), history(&site));
    let hook = HookScript::new(&site, "pre_switch", 1);
    site.set("hooks.pre_switch", &hook.argv());

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains("pre_switch hook"),
        "stderr names the hook:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), history_before);
    assert_eq!(site.containers(), vec![live], "the candidate was removed");
    let env = hook.env();
    assert_eq!(env.get("FIELDTRACK_IMAGE").map(String::as_str), Some("v2"));
    assert_eq!(
        env.get("FIELDTRACK_PREVIOUS").map(String::as_str),
        Some("v1")
    );
    assert_eq!(
        env.get("FIELDTRACK_COLOR").map(String::as_str),
        Some(candidate_color)
    );
    assert_eq!(
        env.get("FIELDTRACK_PORT"),
        Some(&candidate_port.to_string())
    );
    assert_eq!(status(&site)["phase"], "failed");
}

#[test]
fn passing_pre_switch_hook_runs_before_the_switch_with_the_deployment_in_its_env() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let (candidate_color, candidate_port) = idle(&site);
    let upstream_before = upstream(&site);
    let hook = HookScript::new(&site, "pre_switch", 0);
    site.set("hooks.pre_switch", &hook.argv());

    deploy_ok(&site, "v2");

    assert_eq!(
        hook.upstream_seen(),
        upstream_before,
        "nginx still pointed at the old color while the hook ran"
    );
    let env = hook.env();
    assert_eq!(env.get("FIELDTRACK_IMAGE").map(String::as_str), Some("v2"));
    assert_eq!(
        env.get("FIELDTRACK_PREVIOUS").map(String::as_str),
        Some("v1")
    );
    assert_eq!(
        env.get("FIELDTRACK_COLOR").map(String::as_str),
        Some(candidate_color)
    );
    assert_eq!(
        env.get("FIELDTRACK_PORT"),
        Some(&candidate_port.to_string())
    );
    assert_eq!(history(&site), "v2\nv1\n");
    assert_converged(&site, "v2");
}

#[test]
fn failing_post_deploy_hook_is_only_reported() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let hook = HookScript::new(&site, "post_deploy", 1);
    site.set("hooks.post_deploy", &hook.argv());

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(0);
    assert!(
        run.stderr.contains("post_deploy hook failed"),
        "the failure is reported:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_eq!(history(&site), "v2\nv1\n");
    assert_converged(&site, "v2");
    let env = hook.env();
    assert_eq!(env.get("FIELDTRACK_IMAGE").map(String::as_str), Some("v2"));
    assert_eq!(
        env.get("FIELDTRACK_PREVIOUS").map(String::as_str),
        Some("v1")
    );
    // After a full success: the old color was already gone when it ran.
    assert_eq!(
        hook.upstream_seen(),
        upstream(&site),
        "post_deploy ran after the switch"
    );
}

#[test]
fn pre_switch_hook_slower_than_its_timeout_is_killed_and_fails_the_attempt() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let (upstream_before, history_before) = (upstream(&site), history(&site));
    let pid_file = site.dir.join("hung-hook.pid");
    let script = site.dir.join("hung-hook.sh");
    fs::write(
        &script,
        format!("echo $$ > '{}'\nexec sleep 300\n", pid_file.display()),
    )
    .unwrap();
    site.set(
        "hooks.pre_switch",
        &toml_array(&["sh", &script.display().to_string()]),
    );
    site.set("hooks.hook_timeout", "\"2s\"");

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains("pre_switch hook") && run.stderr.contains("timed out"),
        "stderr says the hook timed out:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), upstream_before);
    assert_eq!(history(&site), history_before);
    assert_eq!(site.containers(), vec![live]);
    let pid: i32 = fs::read_to_string(&pid_file)
        .expect("the hook ran")
        .trim()
        .parse()
        .expect("a pid");
    wait_for(PATIENCE, "the hung hook to be gone", || {
        (!procfs::runs(pid)).then_some(())
    });
}

/// A `pre_switch` hook that exits 0 and leaves a background process holding its stdout
/// and stderr is done when it exits: the deployment goes on, well before the hook's
/// timeout, which is shorter than the background process lives.
#[test]
fn pre_switch_hook_that_exits_leaving_a_background_child_on_its_output_passes() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let pid_file = site.dir.join("background.pid");
    let script = site.dir.join("background-hook.sh");
    fs::write(
        &script,
        format!(
            "sleep 60 &\necho $! > '{}'\necho 'smoke ok'\nexit 0\n",
            pid_file.display()
        ),
    )
    .unwrap();
    site.set(
        "hooks.pre_switch",
        &toml_array(&["sh", &script.display().to_string()]),
    );
    site.set("hooks.hook_timeout", "\"10s\"");

    let run = ft(&site, &["deploy", "v2"]);
    let background: i32 = fs::read_to_string(&pid_file)
        .expect("the hook ran")
        .trim()
        .parse()
        .expect("a pid");
    let _ = send_signal(background, libc::SIGKILL);

    run.expect_code(0);
    assert_eq!(history(&site), "v2\nv1\n");
    assert_converged(&site, "v2");
}

/// The idle color and its port: where the next candidate goes.
fn idle(site: &Site) -> (&'static str, u16) {
    let color = idle_color(site);
    (color, port_of(site, &container_name(site, color)))
}

/// A hook script in the site folder: dumps its environment and the upstream file as it
/// was when the hook ran, then exits with `code`. Run as `sh SCRIPT` (an argument array).
struct HookScript {
    script: PathBuf,
    env_file: PathBuf,
    upstream_file: PathBuf,
}

impl HookScript {
    fn new(site: &Site, name: &str, code: i32) -> HookScript {
        let script = site.dir.join(format!("{name}.sh"));
        let env_file = site.dir.join(format!("{name}.env"));
        let upstream_file = site.dir.join(format!("{name}.upstream"));
        fs::write(
            &script,
            format!(
                "env > '{}'\ncat '{}' > '{}'\necho '{name} hook says no' >&2\nexit {code}\n",
                env_file.display(),
                site.upstream_file.display(),
                upstream_file.display(),
            ),
        )
        .unwrap();
        HookScript {
            script,
            env_file,
            upstream_file,
        }
    }

    /// The TOML array to configure.
    fn argv(&self) -> String {
        toml_array(&["sh", &self.script.display().to_string()])
    }

    /// The environment the hook saw.
    fn env(&self) -> BTreeMap<String, String> {
        let text = fs::read_to_string(&self.env_file)
            .unwrap_or_else(|e| panic!("the hook ran ({}: {e})", self.env_file.display()));
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The upstream file as the hook saw it.
    fn upstream_seen(&self) -> String {
        fs::read_to_string(&self.upstream_file).expect("the hook ran")
    }
}
