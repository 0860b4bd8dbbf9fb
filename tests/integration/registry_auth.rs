//! Pulling from a registry that wants a login (the bed's private registry, htpasswd auth on
//! loopback): the error must send the operator the right way. No login, a refused login, a
//! missing tag and a failed credential helper each say what they are, for which registry,
//! and what to do; a right login deploys and rolls back. Each test gives fieldtrack its own
//! `DOCKER_CONFIG`, so no test depends on another's login state.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::common::*;
use fieldtrack_testbed::{Bed, Site};

/// What the Docker config given to fieldtrack holds for the private registry.
enum Login {
    /// No config.json entry at all.
    None,
    /// The right user with a wrong password.
    Wrong,
    /// The user and password the registry accepts.
    Right,
}

/// A Docker config folder inside the site (removed with it) holding `login`.
fn docker_config(site: &Site, login: Login) -> PathBuf {
    let bed = Bed::shared();
    let (name, user, password) = match login {
        Login::None => ("docker-none", "", ""),
        Login::Wrong => (
            "docker-wrong",
            bed.private_user.as_str(),
            "not-the-password",
        ),
        Login::Right => (
            "docker-right",
            bed.private_user.as_str(),
            bed.private_password.as_str(),
        ),
    };
    let dir = site.dir.join(name);
    if user.is_empty() {
        fs::create_dir_all(&dir).expect("config folder");
        fs::write(dir.join("config.json"), "{}\n").expect("config.json");
    } else {
        bed.write_private_login(&dir, user, password)
            .expect("config.json");
    }
    dir
}

/// `fieldtrack ARGS...` with `DOCKER_CONFIG` set to `config`.
fn ft_with(site: &Site, config: &Path, args: &[&str]) -> Run {
    Run::of(command(site, args).env("DOCKER_CONFIG", config))
}

/// `deploy v1` with the right login: production for the failure tests to leave alone.
fn live_v1(site: &Site) -> Production {
    let right = docker_config(site, Login::Right);
    let run = ft_with(site, &right, &["deploy", "v1"]);
    run.expect_code(0);
    assert_eq!(served(site).as_deref(), Some("v1"), "{}", run.stderr);
    Production::of(site)
}

/// The failure is permanent: the generation is marked failed, not retried with backoff.
#[track_caller]
fn assert_failed_for_good(site: &Site) {
    let status = status(site);
    assert_eq!(status["phase"], "failed", "{status:#}");
    assert!(
        !status["failed_generation"].is_null(),
        "an auth error waits for a change, it is not retried: {status:#}"
    );
}

#[test]
fn a_private_image_without_a_login_says_the_registry_wants_one_and_how_to_give_it() {
    let site = Site::private();
    let registry = &Bed::shared().private_registry;
    let before = live_v1(&site);
    let none = docker_config(&site, Login::None);

    let run = ft_with(&site, &none, &["deploy", "v2"]);

    run.expect_code(1);
    let text = &run.stderr;
    assert!(
        text.contains(&format!("registry {registry} wants a login")),
        "{text}"
    );
    assert!(text.contains("no credentials"), "{text}");
    assert!(text.contains(&format!("docker login {registry}")), "{text}");
    assert!(text.contains("DOCKER_CONFIG"), "{text}");
    assert!(!text.contains("not found"), "not a missing image: {text}");
    assert_eq!(Production::of(&site), before);
    assert_failed_for_good(&site);
}

#[test]
fn a_wrong_password_says_the_registry_refused_the_credentials() {
    let site = Site::private();
    let registry = &Bed::shared().private_registry;
    let before = live_v1(&site);
    let wrong = docker_config(&site, Login::Wrong);

    let run = ft_with(&site, &wrong, &["deploy", "v2"]);

    run.expect_code(1);
    let text = &run.stderr;
    assert!(
        text.contains(&format!("registry {registry} refused the credentials")),
        "{text}"
    );
    assert!(text.contains(&format!("docker login {registry}")), "{text}");
    assert!(!text.contains("not-the-password"), "{text}");
    assert!(!text.contains("not found"), "not a missing image: {text}");
    assert_eq!(Production::of(&site), before);
    assert_failed_for_good(&site);
}

#[test]
fn with_the_right_login_a_private_image_deploys() {
    let site = Site::private();
    let right = docker_config(&site, Login::Right);

    for tag in ["v1", "v2"] {
        let run = ft_with(&site, &right, &["deploy", tag]);
        run.expect_code(0);
        assert_eq!(served(&site).as_deref(), Some(tag), "{}", run.stderr);
    }
    assert_converged(&site, "v2");
    assert_eq!(history(&site), "v2\nv1\n");
}

#[test]
fn a_tag_missing_from_a_private_registry_is_not_found_once_logged_in() {
    let site = Site::private();
    let before = live_v1(&site);
    let right = docker_config(&site, Login::Right);

    let run = ft_with(&site, &right, &["deploy", "no-such-tag"]);

    run.expect_code(1);
    let text = &run.stderr;
    assert!(
        text.contains(&format!(
            "image {} was not found",
            site.image("no-such-tag")
        )),
        "{text}"
    );
    assert!(!text.contains("login"), "{text}");
    assert_eq!(Production::of(&site), before);
}

#[test]
fn rollback_pulls_too_and_needs_the_login_as_deploy_does() {
    let site = Site::private();
    let right = docker_config(&site, Login::Right);
    let none = docker_config(&site, Login::None);
    let registry = &Bed::shared().private_registry;
    for tag in ["v1", "v2"] {
        ft_with(&site, &right, &["deploy", tag]).expect_code(0);
    }
    // v1's container is gone since v2 took over; without its local image the rollback pulls.
    site.docker()
        .args(["rmi", &site.image("v1")])
        .output()
        .expect("docker runs");
    let before = Production::of(&site);
    assert_eq!(before.served.as_deref(), Some("v2"));

    let run = ft_with(&site, &none, &["rollback", "--yes"]);

    run.expect_code(1);
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(
        text.contains(&format!("registry {registry} wants a login")),
        "{text}"
    );
    assert!(text.contains(&format!("docker login {registry}")), "{text}");
    assert_eq!(Production::of(&site), before);

    let run = ft_with(&site, &right, &["rollback", "--yes"]);

    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"), "{}", run.stderr);
}

#[test]
fn a_failed_credential_helper_is_named_with_its_exit_code_never_its_output() {
    let site = Site::private();
    let registry = &Bed::shared().private_registry;
    let secret = "hunter2-from-the-helper";
    let bin = site.dir.join("bin");
    fs::create_dir_all(&bin).expect("bin folder");
    let helper = bin.join("docker-credential-xyz");
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\necho '{{\"Username\":\"u\",\"Secret\":\"{secret}-stdout\"}}'\necho '{secret}-stderr' >&2\nexit 3\n"
        ),
    )
    .expect("helper written");
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).expect("chmod");
    let config = site.dir.join("docker-helper");
    fs::create_dir_all(&config).expect("config folder");
    fs::write(
        config.join("config.json"),
        format!("{{\"credHelpers\": {{\"{registry}\": \"xyz\"}}}}\n"),
    )
    .expect("config.json");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    for args in [&["deploy", "v1"][..], &["check"][..]] {
        let out = command(&site, args)
            .env("DOCKER_CONFIG", &config)
            .env("PATH", &path)
            .output()
            .expect("the fieldtrack binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains(secret),
            "{args:?} shows the helper's output:\n{text}"
        );
        assert!(text.contains("docker-credential-xyz"), "{args:?}:\n{text}");
        assert!(text.contains("exit code 3"), "{args:?}:\n{text}");
        if args[0] == "deploy" {
            assert_eq!(out.status.code(), Some(1), "{text}");
            assert!(
                text.contains(&format!("registry {registry} wants a login")),
                "{text}"
            );
        }
    }
}
