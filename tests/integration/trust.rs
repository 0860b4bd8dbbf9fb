//! Whose files fieldtrack trusts, and flags it refuses, through the real binary: a config or
//! env file that someone other than root (or the user running fieldtrack) could change, by
//! owning it or a folder above it or by a group/world write bit, is refused with exit 2
//! naming the path, its owner and mode, and the command that fixes it. A sticky folder such
//! as /tmp is fine above a folder that is itself safe. Absurd durations are exit 2 too.
//!
//! These need no test bed: each runs a read-only command (`status`) or one refused before
//! anything is done. The tests run as root (chown to another uid needs it).

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::common::{fieldtrack_in, Run};

/// `fieldtrack ARGS` run in `cwd`, with nothing inherited that could steer it.
fn fieldtrack(args: &[&str], cwd: &Path) -> Run {
    Run::of(fieldtrack_in(cwd).args(args).env_remove("DOCKER_HOST"))
}

/// A config that needs nothing else: the engine is nowhere, so a command that got as far as
/// Docker fails with exit 1, not 2.
const CONFIG: &str = r#"repository = "registry.test/acme/api"
[docker]
host = "unix:///nonexistent/fieldtrack-trust-test.sock"
"#;

/// A private folder (0700, root's) in /tmp: sticky /tmp above a safe folder.
fn private() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    set_mode(dir.path(), 0o700);
    dir
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `dir/NAME/fieldtrack.toml` with mode 0644; returns the config's path.
fn config_in(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let folder = dir.join(name);
    fs::create_dir_all(&folder).unwrap();
    set_mode(&folder, 0o755);
    let config = folder.join("fieldtrack.toml");
    fs::write(&config, format!("{CONFIG}{extra}")).unwrap();
    set_mode(&config, 0o644);
    config
}

fn status(config: &Path) -> Run {
    let path = config.display().to_string();
    fieldtrack(&["--config", &path, "status"], config.parent().unwrap())
}

#[test]
fn a_config_in_a_safe_folder_below_sticky_tmp_is_used() {
    let dir = private();
    let config = config_in(dir.path(), "app", "");
    status(&config).expect_code(0);

    // A sticky folder of root's, world-writable like /tmp, above a safe folder: fine too.
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    set_mode(&shared, 0o1777);
    let config = config_in(&shared, "app", "");
    status(&config).expect_code(0);
}

#[test]
fn a_config_in_a_folder_owned_by_another_user_is_refused() {
    let dir = private();
    let config = config_in(dir.path(), "app", "");
    let folder = config.parent().unwrap();
    chown(folder, Some(65534), None).unwrap();
    let shown = folder.display().to_string();
    status(&config).expect_code(2).says(&[
        &config.display().to_string(),
        &shown,
        "owned by nobody",
        "0755",
        &format!("chown root {shown}"),
    ]);
}

#[test]
fn a_config_owned_by_another_user_is_refused() {
    let dir = private();
    let config = config_in(dir.path(), "app", "");
    chown(&config, Some(1000), None).unwrap();
    status(&config).expect_code(2).says(&[
        "owned by cloudsdk",
        &format!("chown root {}", config.display()),
    ]);
}

#[test]
fn a_group_writable_config_or_folder_is_refused() {
    let dir = private();
    let config = config_in(dir.path(), "app", "");
    set_mode(&config, 0o664);
    status(&config).expect_code(2).says(&[
        "0664",
        "owner root",
        &format!("chmod go-w {}", config.display()),
    ]);
    set_mode(&config, 0o644);
    let folder = config.parent().unwrap();
    set_mode(folder, 0o775);
    status(&config)
        .expect_code(2)
        .says(&["0775", &format!("chmod go-w {}", folder.display())]);
    // A sticky folder directly holding the config is not enough: anyone may put files in it.
    set_mode(folder, 0o1777);
    status(&config)
        .expect_code(2)
        .says(&["1777", &format!("chmod go-w {}", folder.display())]);
    // World-writable without the sticky bit, above a safe folder: anyone may rename it.
    set_mode(folder, 0o755);
    set_mode(dir.path(), 0o777);
    status(&config)
        .expect_code(2)
        .says(&[&format!("chmod go-w {}", dir.path().display())]);
    set_mode(dir.path(), 0o700);
    status(&config).expect_code(0);
}

#[test]
fn a_group_writable_env_file_is_refused() {
    let dir = private();
    let config = config_in(
        dir.path(),
        "app",
        "[container]\nenv_file = \"secrets/app.env\"\n",
    );
    let secrets = config.parent().unwrap().join("secrets");
    fs::create_dir(&secrets).unwrap();
    set_mode(&secrets, 0o700);
    let env = secrets.join("app.env");
    fs::write(&env, "TOKEN=s3cr3t\n").unwrap();
    set_mode(&env, 0o600);
    status(&config).expect_code(0);

    set_mode(&env, 0o660);
    let run = status(&config);
    run.expect_code(2)
        .says(&[&format!("chmod go-w {}", env.display()), "0660"]);
    assert!(!run.stderr.contains("s3cr3t"), "{}", run.stderr);

    set_mode(&env, 0o600);
    chown(&secrets, Some(1000), None).unwrap();
    status(&config)
        .expect_code(2)
        .says(&[&format!("chown root {}", secrets.display())]);
}

#[test]
fn a_fieldtrack_toml_planted_in_a_group_writable_cwd_is_refused() {
    let dir = private();
    let config = config_in(dir.path(), "clone", "");
    let cwd = config.parent().unwrap();
    // Found without --config, from the current folder.
    fieldtrack(&["status"], cwd).expect_code(0);
    set_mode(cwd, 0o775);
    fieldtrack(&["status"], cwd).expect_code(2).says(&[
        &config.display().to_string(),
        &format!("chmod go-w {}", cwd.display()),
    ]);
    set_mode(cwd, 0o755);
    chown(&config, Some(65534), Some(65534)).unwrap();
    fieldtrack(&["status"], cwd)
        .expect_code(2)
        .says(&["owned by nobody"]);
}

#[test]
fn a_timeout_beyond_seven_days_is_refused_before_anything_is_written() {
    let dir = private();
    let config = config_in(dir.path(), "app", "");
    let desired = config.parent().unwrap().join("desired.toml");
    let path = config.display().to_string();
    for args in [
        vec!["deploy", "v1", "--timeout", "99999999999d"],
        vec!["deploy", "v1", "--timeout", "8d"],
        vec!["rollback", "--yes", "--timeout", "99999999999d"],
    ] {
        let mut all = vec!["--config", path.as_str()];
        all.extend(args);
        fieldtrack(&all, dir.path())
            .expect_code(2)
            .says(&["--timeout", "7days"]);
        assert!(
            !desired.exists(),
            "{args:?} wrote the desired file",
            args = all
        );
    }
}

#[test]
fn absurd_durations_in_the_config_are_exit_2_naming_the_key() {
    let dir = private();
    for (extra, key) in [
        ("[rollout]\ndrain = \"99999999999d\"\n", "rollout.drain"),
        ("[health]\ntimeout = \"8d\"\n", "health.timeout"),
        (
            "[health]\ninterval = \"7d\"\nattempts = 4294967295\n",
            "health.attempts",
        ),
    ] {
        let config = config_in(dir.path(), "app", extra);
        status(&config).expect_code(2).says(&[key, "7days"]);
    }
}
