//! The files shipped beside the binary: the systemd units, the Debian package built by
//! `scripts/package.sh`, the CI recipes in `examples/`, and how `scripts/test.sh` counts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `systemd-analyze verify` on `name` (a unit, or an instance of the template in
/// `file`) with ExecStart pointed at the binary under test, and asserts it says nothing
/// about our unit: it only warns about unknown keys and the like, so any line is a failure.
fn verify(file: &str, name: &str) {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze is missing: the test bed installs Debian's systemd package (testbed up)"
    );
    let unit = std::fs::read_to_string(repo(file)).unwrap();
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit.replace("/usr/bin/fieldtrack", env!("CARGO_BIN_EXE_fieldtrack"));
    let file_name = Path::new(file).file_name().unwrap();
    std::fs::write(dir.path().join(file_name), unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(dir.path().join(name))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify {name} failed: {stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("fieldtrack"))
        .collect();
    assert!(ours.is_empty(), "verify {name} warned: {ours:?}");
}

/// `systemd-analyze verify` accepts the unit without a single warning.
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo("systemd/fieldtrack.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    verify("systemd/fieldtrack.service", "fieldtrack.service");
}

/// The template unit, instantiated as `fieldtrack@api.service`, is just as clean, reads
/// `/etc/fieldtrack/api.toml`, and is hardened exactly like the single unit.
#[test]
fn template_unit_passes_systemd_analyze_verify_as_an_instance() {
    verify("systemd/fieldtrack@.service", "fieldtrack@api.service");
    let single = std::fs::read_to_string(repo("systemd/fieldtrack.service")).unwrap();
    let template = std::fs::read_to_string(repo("systemd/fieldtrack@.service")).unwrap();
    assert!(
        template.contains(
            "ExecStart=/usr/bin/fieldtrack --config /etc/fieldtrack/%i.toml daemon --log-format json"
        ),
        "{template}"
    );
    // Every setting but the description and ExecStart is the same.
    let settings = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .filter(|l| !l.starts_with("Description=") && !l.starts_with("ExecStart="))
            .map(str::to_string)
            .collect()
    };
    // The single unit's app has its files one level up: the template's `%i/` is empty.
    let single = single
        .replace("-/etc/fieldtrack/desired", "-/etc/fieldtrack/%i/desired")
        .replace(
            "-/var/lib/fieldtrack-public ",
            "-/var/lib/fieldtrack-public/%i ",
        )
        .replace(
            "StateDirectory=fieldtrack\n",
            "StateDirectory=fieldtrack/%i\n",
        );
    assert_eq!(settings(&template), settings(&single));
}

/// Both units keep root to two capabilities, a system-call filter and the few paths it must
/// write, and `systemd-analyze security` rates them 3.0 or lower (5.5 before the hardening).
#[test]
fn systemd_units_are_hardened_to_an_exposure_of_3_or_lower() {
    for (file, name) in [
        ("systemd/fieldtrack.service", "fieldtrack.service"),
        ("systemd/fieldtrack@.service", "fieldtrack@api.service"),
    ] {
        let unit = std::fs::read_to_string(repo(file)).unwrap();
        for line in [
            "CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_KILL",
            "SystemCallFilter=@system-service",
            "StateDirectoryMode=0700",
        ] {
            assert!(unit.lines().any(|l| l == line), "{file} lacks {line}");
        }
        let writable: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("ReadWritePaths="))
            .flat_map(str::split_whitespace)
            // "-": a path that does not exist is skipped rather than failing the start.
            .map(|p| p.trim_start_matches('-'))
            .collect();
        assert!(
            writable.iter().all(|p| p.ends_with("/desired")
                || p.starts_with("/var/lib/fieldtrack-public")
                || [
                    "/etc/fieldtrack/nginx",
                    "/etc/nginx/conf.d",
                    "/var/log/nginx",
                    "/run/nginx.pid"
                ]
                .contains(p)),
            "{file} may write {writable:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(Path::new(file).file_name().unwrap()), &unit).unwrap();
        let out = Command::new("/usr/bin/systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(dir.path().join(name))
            .output()
            .expect("systemd-analyze runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let level: f64 = stdout
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{stdout}"));
        assert!(level <= 3.0, "{name}: exposure {level}:\n{stdout}");
    }
}

/// `scripts/package.sh` builds the .deb (from the binary under test: no second build), and
/// what it installs, unpacked into an empty folder, runs: `--version`, `init`, `status`.
#[test]
fn debian_package_builds_and_its_installed_binary_runs() {
    let out = tempfile::tempdir().unwrap();
    let run = Command::new(repo("scripts/package.sh"))
        .args(["--profile", "dev", "--no-build", "--fast", "--out"])
        .arg(out.path())
        .output()
        .expect("scripts/package.sh runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "package.sh failed: {stderr}");
    let deb = PathBuf::from(String::from_utf8_lossy(&run.stdout).trim().to_string());
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("fieldtrack_{}-", env!("CARGO_PKG_VERSION"))),
        "{}",
        deb.display()
    );

    let field = |name: &str| {
        let out = Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg(name)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Package"), "fieldtrack");
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    assert!(field("Recommends").contains("nginx"));

    let root = tempfile::tempdir().unwrap();
    let status = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(root.path())
        .status()
        .unwrap();
    assert!(status.success(), "dpkg -x");
    let installed = |path: &str| root.path().join(path);
    for path in [
        "usr/bin/fieldtrack",
        "usr/lib/systemd/system/fieldtrack.service",
        "usr/lib/systemd/system/fieldtrack@.service",
        "usr/share/doc/fieldtrack/README.md",
        "usr/share/doc/fieldtrack/copyright",
        "usr/share/doc/fieldtrack/fieldtrack.toml.example",
        "usr/share/doc/fieldtrack/desired.toml.example",
        "usr/share/doc/fieldtrack/docs/operations.md",
        "usr/share/doc/fieldtrack/examples/github-actions/deploy.yml",
        "usr/share/doc/fieldtrack/examples/gitlab-ci/.gitlab-ci.yml",
        "usr/share/bash-completion/completions/fieldtrack",
        "usr/share/zsh/vendor-completions/_fieldtrack",
        "usr/share/fish/vendor_completions.d/fieldtrack.fish",
        "usr/share/man/man1/fieldtrack.1.gz",
        "usr/share/man/man1/fieldtrack-deploy.1.gz",
        "usr/share/man/man1/fieldtrack-init.1.gz",
    ] {
        assert!(installed(path).is_file(), "{path} is in the package");
    }
    // The units it ships are the repository's.
    assert_eq!(
        std::fs::read(installed("usr/lib/systemd/system/fieldtrack@.service")).unwrap(),
        std::fs::read(repo("systemd/fieldtrack@.service")).unwrap()
    );

    // Completions offer the commands, not the hidden packaging ones.
    let bash = std::fs::read_to_string(installed(
        "usr/share/bash-completion/completions/fieldtrack",
    ))
    .unwrap();
    for word in ["deploy", "rollback", "init", "check"] {
        assert!(bash.contains(word), "bash completion offers {word}");
    }
    for shell in [
        "usr/share/bash-completion/completions/fieldtrack",
        "usr/share/zsh/vendor-completions/_fieldtrack",
        "usr/share/fish/vendor_completions.d/fieldtrack.fish",
    ] {
        let text = std::fs::read_to_string(installed(shell)).unwrap();
        assert!(!text.contains("manpage"), "{shell} offers a hidden command");
    }
    let man = Command::new("gzip")
        .arg("-dc")
        .arg(installed("usr/share/man/man1/fieldtrack.1.gz"))
        .output()
        .unwrap();
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.starts_with(".ie") || man.contains(".TH fieldtrack 1"),
        "{man}"
    );
    assert!(man.contains("fieldtrack\\-deploy(1)"), "{man}");

    // The installed binary runs on its own.
    let bin = installed("usr/bin/fieldtrack");
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("fieldtrack {}", env!("CARGO_PKG_VERSION"))
    );
    let etc = root.path().join("etc/fieldtrack");
    let init = Command::new(&bin)
        .args([
            "init",
            "--app",
            "api",
            "--repository",
            "ghcr.io/acme/api",
            "--dir",
        ])
        .arg(&etc)
        .env_remove("FIELDTRACK_CONFIG")
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    assert!(etc.join("fieldtrack.toml").is_file());
    let status = Command::new(&bin)
        .arg("--config")
        .arg(etc.join("fieldtrack.toml"))
        .arg("status")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "the generated config loads: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path} is not YAML: {e}"))
}

/// Every `run:` or `script:` line of a recipe, joined.
fn scripts(value: &Value, out: &mut String) {
    match value {
        Value::Mapping(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    (Some("run"), Value::String(s)) => out.push_str(s),
                    (Some("script" | "before_script"), Value::Sequence(lines)) => {
                        for line in lines.iter().filter_map(Value::as_str) {
                            out.push_str(line);
                            out.push('\n');
                        }
                    }
                    _ => scripts(value, out),
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|v| scripts(v, out)),
        _ => {}
    }
}

/// The two deploy methods of docs/ci.md, in the shape CI needs them: `fieldtrack deploy`
/// over ssh (its exit code fails the job), or the desired file uploaded to a temporary name
/// in the same folder and moved over.
fn assert_both_deploy_methods(path: &str, script: &str) {
    assert!(
        script.contains("fieldtrack deploy \"$TAG\" --by ci"),
        "{path}: deploy over ssh"
    );
    let upload = script
        .find(".desired.toml.ci-tmp\"")
        .unwrap_or_else(|| panic!("{path}: upload to a temporary name"));
    let mv = script
        .find("mv \"$")
        .unwrap_or_else(|| panic!("{path}: mv over desired.toml"));
    assert!(upload < mv, "{path}: upload, then mv");
    assert!(script.contains("/desired.toml\""), "{path}");
    assert!(
        !script.contains("|| true"),
        "{path}: failures are never hidden"
    );
}

#[test]
fn github_actions_recipe_is_a_workflow_that_builds_pushes_and_deploys() {
    let path = "examples/github-actions/deploy.yml";
    let doc = yaml(path);
    // `on` must stay a string key (YAML 1.1 would read it as true).
    assert!(doc.get("on").is_some(), "{path}: `on` key");
    let jobs = doc.get("jobs").and_then(Value::as_mapping).expect("jobs");
    for job in ["build", "deploy-ssh", "deploy-file"] {
        let steps = jobs
            .get(job)
            .and_then(|j| j.get("steps"))
            .and_then(Value::as_sequence)
            .unwrap_or_else(|| panic!("{path}: job {job} has steps"));
        assert!(!steps.is_empty());
        if job != "build" {
            assert_eq!(
                jobs[job].get("needs").and_then(Value::as_str),
                Some("build"),
                "{job} waits for the image"
            );
        }
    }
    let mut script = String::new();
    scripts(&doc, &mut script);
    assert!(script.contains("docker push \"$IMAGE:$TAG\""), "{script}");
    assert_both_deploy_methods(path, &script);
    // Untrusted text (the commit message) reaches the script through env, never `${{ }}`.
    assert!(
        !script.contains("${{ github.event"),
        "{path}: script injection"
    );
}

#[test]
fn gitlab_ci_recipe_is_a_pipeline_that_builds_pushes_and_deploys() {
    let path = "examples/gitlab-ci/.gitlab-ci.yml";
    let doc = yaml(path);
    let stages: Vec<&str> = doc
        .get("stages")
        .and_then(Value::as_sequence)
        .expect("stages")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(stages, ["build", "deploy"]);
    for job in ["build", "deploy", "deploy-file"] {
        assert!(doc.get(job).is_some(), "{path}: job {job}");
    }
    for job in ["deploy", "deploy-file"] {
        assert_eq!(
            doc[job].get("extends").and_then(Value::as_str),
            Some(".ssh")
        );
    }
    assert_eq!(
        doc[".ssh"].get("resource_group").and_then(Value::as_str),
        Some("production"),
        "one deployment at a time"
    );
    let mut script = String::new();
    scripts(&doc, &mut script);
    assert!(script.contains("docker push \"$IMAGE:$TAG\""), "{script}");
    assert_both_deploy_methods(path, &script);
}

/// What `cargo test --workspace --no-fail-fast -- --quiet` prints when one test panics
/// with counts in its message, one fails an assertion, and one test binary aborts before
/// its summary: the shape `scripts/test.sh` reads.
const FAILING_RUN: &str = r#"   Compiling sample v0.1.0 (/tmp/sample)
    Finished `test` profile [unoptimized + debuginfo] target(s) in 0.44s
     Running unittests src/lib.rs (target/debug/deps/sample-e6daf73c296d6df0)

running 3 tests
.. 2/3
tests::fails_with_a_count_in_its_message --- FAILED

failures:

---- tests::fails_with_a_count_in_its_message stdout ----

thread 'tests::fails_with_a_count_in_its_message' (14530) panicked at src/lib.rs:8:46:
7 failed, 12 passed in the fake run
test result: ok. 40 passed; 0 failed; said the fake run too
note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.


failures:
    tests::fails_with_a_count_in_its_message

test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.08s

error: test failed, to rerun pass `--lib`
     Running tests/crash.rs (target/debug/deps/crash-4123a8a96c2e231a)

running 1 test
error: test failed, to rerun pass `--test crash`

Caused by:
  process didn't exit successfully: `/tmp/sample/target/debug/deps/crash-4123a8a96c2e231a --quiet` (signal: 6, SIGABRT: process abort signal)
     Running tests/other.rs (target/debug/deps/other-9a316aeee897365e)

running 3 tests
i. 2/3
two --- FAILED

failures:

---- two stdout ----

thread 'two' (14537) panicked at tests/other.rs:4:12:
assertion `left == right` failed: 3 failed
  left: 1
 right: 2


failures:
    two

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.08s

error: test failed, to rerun pass `--test other`
   Doc-tests sample

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

error: 3 targets failed:
    `--lib`
    `--test crash`
    `--test other`
"#;

/// Runs `scripts/test-summary.sh` on `log` and returns its exit status and output.
fn summarize(log: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    std::fs::write(&path, log).unwrap();
    let out = Command::new(repo("scripts/test-summary.sh"))
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `scripts/test.sh` counts only cargo's `test result:` lines (never a count inside a
/// test's message), names every failed test with the command that reruns it, names a test
/// binary that died before its summary, and fails.
#[test]
fn test_script_counts_only_result_lines_and_names_the_failed_tests() {
    let (ok, out) = summarize(FAILING_RUN);
    assert!(!ok, "a run with failures must exit non-zero:\n{out}");
    assert_eq!(
        out.lines().last(),
        Some("tests: 3 passed, 2 failed"),
        "{out}"
    );
    for line in [
        "cargo test --lib -- --exact tests::fails_with_a_count_in_its_message",
        "cargo test --test other -- --exact two",
        "cargo test --test crash (the test binary ended before its summary)",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

/// A run where every test passed exits 0 with the closing count and no list.
#[test]
fn test_script_passes_a_clean_run() {
    let clean = "     Running tests/other.rs (target/debug/deps/other-1)\n\nrunning 2 tests\n..\n\
                 test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; \
                 finished in 0.01s\n\n";
    let (ok, out) = summarize(clean);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "tests: 2 passed, 0 failed");
}
