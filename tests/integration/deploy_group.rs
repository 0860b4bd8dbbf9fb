//! CI's user without root: a member of the deploy group, who may write the desired file's
//! folder and nothing else, deploys, learns the result, reads status and history and rolls
//! back, following the daemon through what it publishes (`public_dir`). Real engine,
//! registry and nginx; the daemon runs as root, the commands as a user of this machine made
//! for the tests.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::{self, command, fast_health, served, wait_for, Run, Spawned, PATIENCE};
use fieldtrack_testbed::Site;

/// The group and its one member, CI's user.
const GROUP: &str = "ft-deploy-test";
const USER: &str = "ft-ci-test";

/// (uid, gid) of CI's user, made once for the whole machine.
fn ci_user() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let exists = |db: &str, name: &str| {
            Command::new("getent")
                .args([db, name])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !exists("group", GROUP) {
            let _ = Command::new("groupadd").args(["--system", GROUP]).status();
        }
        if !exists("passwd", USER) {
            let _ = Command::new("useradd")
                .args(["--system", "--no-create-home", "--gid", GROUP, USER])
                .status();
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, USER]).output().unwrap();
            assert!(out.status.success(), "the test user {USER} exists");
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        (id("-u"), id("-g"))
    })
}

/// A site laid out as `fieldtrack init` lays out a server: the desired file in a folder of
/// its own that the group may write (2775), what the daemon publishes in a folder the group
/// may read (2750), the state folder root's alone.
fn group_site() -> Site {
    let (_, gid) = ci_user();
    let mut site = Site::new();
    fast_health(&mut site);
    site.set("rollout.drain", "\"1s\"");
    site.set("desired_file", "\"desired/desired.toml\"");
    site.set("public_dir", "\"public\"");
    for (dir, mode) in [("desired", 0o2775), ("public", 0o2750)] {
        let path = site.dir.join(dir);
        fs::create_dir_all(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(0), Some(gid)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    site
}

fn desired_path(site: &Site) -> std::path::PathBuf {
    site.dir.join("desired/desired.toml")
}

/// `fieldtrack --config SITE ARGS...` as CI's user.
fn as_ci(site: &Site, args: &[&str]) -> Run {
    let (uid, gid) = ci_user();
    let plain = command(site, args);
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .arg(plain.get_program())
        .args(plain.get_args())
        .current_dir(&site.dir)
        .env_remove("FIELDTRACK_CONFIG")
        .env_remove("FIELDTRACK_TEST_PAUSE_AT")
        .env("USER", USER)
        .stdin(std::process::Stdio::null());
    Run::of(&mut cmd)
}

/// The daemon, as root, once it published its first status.
fn daemon(site: &Site) -> Spawned {
    let mut daemon = Spawned::start(site, &["daemon"], None);
    daemon.wait_for_line("daemon started");
    wait_for(PATIENCE, "the daemon publishes its status", || {
        let text = fs::read_to_string(site.dir.join("public/status.json")).ok()?;
        text.contains("\"lock_inode\"").then_some(())
    });
    daemon
}

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", run.stdout, run.stderr))
}

#[test]
fn a_deploy_group_member_deploys_learns_the_result_reads_history_and_rolls_back_without_root() {
    let site = group_site();
    fs::write(desired_path(&site), "image = \"v1\"\n").unwrap();
    let _daemon = daemon(&site);
    wait_for(PATIENCE, "v1 served", || {
        (served(&site).as_deref() == Some("v1")).then_some(())
    });

    // The state folder is root's alone; what the member reads is root's too, group-readable.
    let (_, gid) = ci_user();
    let published = fs::metadata(site.dir.join("public/status.json")).unwrap();
    assert_eq!(published.uid(), 0);
    assert_eq!(published.gid(), gid, "the published status has the group");
    assert_eq!(published.permissions().mode() & 0o777, 0o640);

    let run = as_ci(&site, &["deploy", "v2", "--by", "ci"]);
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v2"), "{}", run.stderr);

    let status = json(as_ci(&site, &["status", "--json"]).expect_code(0));
    assert_eq!(status["phase"], "converged");
    assert_eq!(status["desired"], "v2");
    assert_eq!(status["daemon"]["running"], true, "{status}");
    assert!(status["live"]["image"].as_str().unwrap().ends_with(":v2"));

    // An image that never gets healthy: exit 1 with the reason, production untouched, and
    // not a line of what the container printed.
    let run = as_ci(&site, &["deploy", "unhealthy", "--by", "ci"]);
    run.expect_code(1)
        .says(&["did not become healthy", "production untouched"]);
    assert!(
        !run.stderr.contains("Last log lines"),
        "container output reached the group:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v2"));

    let history = as_ci(&site, &["history"]);
    history.expect_code(0);
    assert!(
        history.stdout.contains(" 1. v2 (current)") && history.stdout.contains(" 2. v1"),
        "{}",
        history.stdout
    );
    assert!(history.stdout.contains("by ci"), "{}", history.stdout);
    let entries = json(as_ci(&site, &["history", "--json"]).expect_code(0));
    assert_eq!(entries[0]["image"], "v2");
    assert_eq!(entries[0]["by"], "ci");

    let run = as_ci(&site, &["rollback", "--yes"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("2. v1 ← rollback target"),
        "{}",
        run.stdout
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
}

#[test]
fn without_a_daemon_a_deploy_group_member_is_refused_and_nothing_is_written() {
    let site = group_site();
    fs::write(desired_path(&site), "image = \"v1\"\n").unwrap();
    // Converged once by root, in-process: the published status exists, no daemon runs.
    common::ft(&site, &["reconcile"]).expect_code(0);
    let before = fs::read(desired_path(&site)).unwrap();

    let run = as_ci(&site, &["deploy", "v2", "--by", "ci"]);
    run.expect_code(2)
        .says(&["no fieldtrack daemon is running", "nothing was written"]);
    assert_eq!(fs::read(desired_path(&site)).unwrap(), before);
    let run = as_ci(&site, &["rollback", "--yes"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert_eq!(fs::read(desired_path(&site)).unwrap(), before);

    let status = as_ci(&site, &["status"]);
    status.expect_code(0);
    assert!(
        status.stdout.contains("Daemon    : not running"),
        "{}",
        status.stdout
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
}

#[test]
fn a_member_who_can_read_nothing_published_is_refused_naming_the_fix() {
    let site = group_site();
    fs::write(desired_path(&site), "image = \"v1\"\n").unwrap();
    let before = fs::read(desired_path(&site)).unwrap();
    // No pass ran, nothing is published, no daemon: the member cannot follow anything.
    let run = as_ci(&site, &["deploy", "v2", "--by", "ci"]);
    run.expect_code(2)
        .says(&["nothing was written", "systemctl start fieldtrack"]);
    assert_eq!(fs::read(desired_path(&site)).unwrap(), before);
}
