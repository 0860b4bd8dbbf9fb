//! Health checks that real frameworks answer, on the real engine and nginx: an app that
//! refuses a Host it does not know (Rails 7 `config.hosts`, Django `ALLOWED_HOSTS`; the test
//! app's `REQUIRE_HOST`) fails its gate when probed as `127.0.0.1:PORT`, with a hint at
//! `health.host`, and deploys once the probe sends the name; `health.expect` decides which
//! answers count as healthy.

use crate::common::*;
use fieldtrack_testbed::Site;

/// The name the app accepts, as `config.hosts` would list it.
const APP_HOST: &str = "api.example.test";

/// A site whose containers get `REQUIRE_HOST={APP_HOST}` from their env file.
fn site_requiring_the_host() -> Site {
    let mut site = Site::new();
    fast_health(&mut site);
    site.set("container.env_file", "\"app.env\"");
    write_new(
        &site.dir.join("app.env"),
        format!("REQUIRE_HOST={APP_HOST}\n"),
    );
    site
}

#[test]
fn an_app_refusing_the_probes_host_fails_its_gate_with_a_hint_until_health_host_names_it() {
    // v1 started before the env file existed: it answers any Host, as the old version of
    // an app does before config.hosts was turned on.
    let mut site = Site::new();
    fast_health(&mut site);
    deploy_ok(&site, "v1");
    site.set("container.env_file", "\"app.env\"");
    write_new(
        &site.dir.join("app.env"),
        format!("REQUIRE_HOST={APP_HOST}\n"),
    );
    let before = Production::of(&site);
    let candidate = container_name(&site, idle_color(&site));
    let port = port_of_color(&site, idle_color(&site));

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(1);
    let hint = format!("the app may refuse the Host 127.0.0.1:{port}");
    for part in [
        &format!("candidate {candidate} (v2) did not become healthy"),
        "last probe: HTTP 403",
        &hint,
        "set health.host",
    ] {
        assert!(run.stderr.contains(part), "{part:?} in:\n{}", run.stderr);
    }
    before.assert_same(&site);
    let status = status(&site);
    assert_eq!(status["phase"], "failed", "{status:#}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(message.contains(&hint), "{status:#}");
    let shown = ft(&site, &["status"]);
    assert!(shown.stdout.contains(&hint), "{}", shown.stdout);

    site.set("health.host", &toml_str(APP_HOST));
    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v2"), "{}", run.stderr);
    assert_converged(&site, "v2");
    assert_eq!(history(&site), "v2\nv1\n");
}

#[test]
fn a_first_deploy_with_health_host_passes_the_gate_of_an_app_that_checks_it() {
    let mut site = site_requiring_the_host();
    site.set("health.host", &toml_str(APP_HOST));
    site.set("health.headers", "{ X-Forwarded-Proto = \"https\" }");

    deploy_ok(&site, "v1");

    assert_converged(&site, "v1");
}

#[test]
fn expect_counts_the_codes_it_names_as_healthy() {
    // Without health.host this app answers 403: healthy only because expect says so.
    let mut site = site_requiring_the_host();
    site.set("health.expect", "[403]");

    deploy_ok(&site, "v1");

    assert_converged(&site, "v1");
    // The same answer no longer passes once expect leaves it out: `check` tells, from the
    // live container, before a deployment fails on it.
    site.set("health.expect", "[\"2xx\", 401]");
    let port = port_of_color(&site, live_color(&site));
    let check = ft(&site, &["check"]);
    let line = check
        .stdout
        .lines()
        .find(|l| l.contains(" health "))
        .unwrap_or_else(|| panic!("a health line in:\n{}", check.stdout));
    assert!(line.starts_with("WARN"), "{line}");
    for part in [
        "healthy on 2xx, 401",
        &format!("on 127.0.0.1:{port} answered HTTP 403"),
        &format!("may refuse the Host 127.0.0.1:{port}"),
    ] {
        assert!(line.contains(part), "{part:?} in {line}");
    }
    let before = Production::of(&site);
    let run = ft(&site, &["deploy", "v2"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("last probe: HTTP 403"),
        "{}",
        run.stderr
    );
    before.assert_same(&site);
}

#[test]
fn a_changed_probe_is_a_new_deployment_of_the_live_image_blue_green() {
    let mut site = site_requiring_the_host();
    site.set("health.host", &toml_str(APP_HOST));
    deploy_ok(&site, "v1");
    let first = container_name(&site, live_color(&site));

    // A Host the app refuses: the live container never answered that probe, so the next pass
    // gates v1 again with it, in the other color, and production stays as it was.
    site.set("health.host", &toml_str("other.example.test"));
    let plan = ft(&site, &["plan"]);
    plan.expect_code(3);
    let change = r#"health.host: "api.example.test" -> "other.example.test""#;
    assert!(plan.stdout.contains(change), "{}", plan.stdout);
    let before = Production::of(&site);
    let run = ft(&site, &["reconcile"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("last probe: HTTP 403"),
        "{}",
        run.stderr
    );
    before.assert_same(&site);

    // A header added to the probe the app accepts: v1 again, blue/green, and the switch.
    site.set("health.host", &toml_str(APP_HOST));
    site.set("health.headers", "{ X-Forwarded-Proto = \"https\" }");
    let plan = ft(&site, &["plan"]);
    plan.expect_code(3);
    assert!(
        plan.stdout
            .contains("health.headers: (unset) -> {\"X-Forwarded-Proto\":\"sha256:"),
        "the header named, its value never shown: {}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("https"), "{}", plan.stdout);
    ft(&site, &["reconcile"]).expect_code(0);
    assert_converged(&site, "v1");
    assert_ne!(container_name(&site, live_color(&site)), first);
    assert_eq!(history(&site), "v1\n");
    ft(&site, &["plan"]).expect_code(0);
}

/// The host port of `color`, as the site's config gives it.
fn port_of_color(site: &Site, color: &str) -> u16 {
    match color {
        "blue" => site.blue_port,
        _ => site.green_port,
    }
}
