//! A deploy tool's first duty: never remove the container nginx sends traffic to, and never
//! lose track of an image that served. Driven through the real binary against the real
//! Docker engine, registry and nginx; the observation is what nginx answers.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::common::tmpfs::Tmpfs;
use crate::common::*;
use fieldtrack_testbed::{util, Bed, Site};

#[test]
fn a_serving_container_on_ports_the_config_no_longer_names_keeps_serving_through_a_failed_deploy() {
    let mut site = Site::new();
    fast_health(&mut site);
    // v2 ends up in blue, the color a plan falls back on when the upstream names neither.
    deploy_ok(&site, "v1");
    deploy_ok(&site, "v2");
    assert_eq!(live_color(&site), "blue");
    let serving = container_name(&site, "blue");

    // The operator moves the color ports (and reloads the config): the upstream file and the
    // running container still use the old port.
    let ports = util::free_ports(2).expect("two free ports");
    site.set("container.blue_port", &ports[0].to_string());
    site.set("container.green_port", &ports[1].to_string());

    let run = ft(&site, &["deploy", "unhealthy"]);

    run.expect_code(1);
    assert_eq!(
        served(&site).as_deref(),
        Some("v2"),
        "the container nginx points at still serves:\n{}",
        run.stderr
    );
    assert!(site.containers().contains(&serving), "{serving} was kept");
    assert_eq!(history(&site), "v2\nv1\n");

    // A good image moves to the new ports, and the old container goes only after the switch.
    site.blue_port = ports[0];
    site.green_port = ports[1];
    deploy_ok(&site, "v3");
    assert_eq!(
        site.containers(),
        vec![container_name(&site, live_color(&site))]
    );
    assert_eq!(history(&site), "v3\nv2\nv1\n");
}

#[test]
fn a_failed_switch_whose_restore_also_failed_keeps_the_candidate_nginx_points_at() {
    let Some((mut site, disk)) = site_with_upstream_on_a_tmpfs() else {
        return;
    };
    deploy_ok(&site, "v1");
    let candidate = container_name(&site, idle_color(&site));
    let candidate_port = match idle_color(&site) {
        "blue" => site.blue_port,
        _ => site.green_port,
    };
    // `nginx -t` fails, and the upstream file's disk is full by then: the previous file
    // cannot be put back.
    let filler = disk.join("filler");
    let test = script(
        &site,
        "test-fills-the-disk",
        &format!(
            "dd if=/dev/zero of={} bs=1k count=1024 2>/dev/null\nexit 1\n",
            filler.display()
        ),
    );
    site.set("nginx.test_command", &format!("[{test:?}]"));

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(1);
    assert!(
        run.stderr.contains("restore") && run.stderr.contains("removed nothing"),
        "the error says the restore failed and nothing was removed:\n{}",
        run.stderr
    );
    let status = status(&site);
    assert_eq!(status["phase"], "failed", "{status:#}");
    let message = status["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&candidate) && message.contains("nginx -t"),
        "status says what to check: {message}"
    );
    // The file on disk points at the candidate, which is still there.
    assert_eq!(upstream_port(&site), candidate_port);
    assert!(
        site.containers().contains(&candidate),
        "{candidate} was kept: {:?}",
        site.containers()
    );
    assert_eq!(history(&site), "v1\n");

    // Any later reload (logrotate's, an operator's) makes nginx use the file on disk: it
    // still reaches a container.
    fs::remove_file(&filler).unwrap();
    reload_nginx(&site);
    wait_until(PATIENCE, "nginx serves v2 from the kept candidate", || {
        served(&site).as_deref() == Some("v2")
    });
}

#[test]
fn a_reload_that_took_effect_then_failed_twice_keeps_the_candidate_nginx_switched_to() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let candidate = container_name(&site, idle_color(&site));
    // The next reload works but reports a failure (as one that timed out after taking
    // effect would); the one after it, reloading the restored file, fails outright.
    let count = site.dir.join("reloads");
    let reload = script(
        &site,
        "reload-then-fail",
        &format!(
            "n=$(cat {count} 2>/dev/null || echo 0)\nn=$((n + 1))\necho $n > {count}\n\
             if [ $n = 1 ]; then {reload} >/dev/null 2>&1; fi\n\
             echo reload failed >&2\nexit 1\n",
            count = count.display(),
            reload = nginx_reload_command(&site),
        ),
    );
    site.set("nginx.reload_command", &format!("[{reload:?}]"));

    let run = ft(&site, &["deploy", "v2"]);

    run.expect_code(1);
    assert_eq!(fs::read_to_string(&count).unwrap().trim(), "2");
    assert!(
        run.stderr.contains("may still send traffic"),
        "the error says nginx may use the new file:\n{}",
        run.stderr
    );
    assert!(
        site.containers().contains(&candidate),
        "{candidate} was kept: {:?}",
        site.containers()
    );
    // nginx did switch (its old worker may answer v1 a moment longer): it must reach a
    // container.
    wait_until(PATIENCE, "nginx serves v2 from the kept candidate", || {
        served(&site).as_deref() == Some("v2")
    });
    assert_eq!(history(&site), "v1\n");
    assert_eq!(status(&site)["phase"], "failed");
}

#[test]
fn an_image_that_served_is_recorded_when_a_newer_deploy_takes_over_after_a_kill_in_its_drain() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    // v2 is switched to, then its deploy dies during the drain (v1 still running).
    let mut deploy = Spawned::start(&site, &["deploy", "v2"], Some("draining"));
    deploy.wait_for_line("fieldtrack: test pause at draining");
    deploy.kill();
    // nginx reloads asynchronously: its old worker may answer v1 a moment longer.
    wait_until(PATIENCE, "nginx serves v2", || {
        served(&site).as_deref() == Some("v2")
    });

    deploy_ok(&site, "v3");

    assert_eq!(history(&site), "v3\nv2\nv1\n");
    let last = audit(&site).pop().expect("an audit record");
    assert_eq!(last["image"], "v3");
    assert_eq!(last["previous"], "v2", "{last:#}");
    let rollback = ft(&site, &["rollback", "--yes"]);
    rollback.expect_code(0);
    assert!(
        rollback.stdout.contains("v2"),
        "the rollback screen offers v2:\n{}",
        rollback.stdout
    );
    assert_eq!(served(&site).as_deref(), Some("v2"));
    assert_eq!(history(&site), "v2\nv3\nv1\n");
}

/// A site whose upstream file lives on a 64 KiB tmpfs of its own (nginx's own include file
/// includes it), and the tmpfs.
fn site_with_upstream_on_a_tmpfs() -> Option<(Site, Tmpfs)> {
    let mut site = Site::new();
    let dir = site.dir.join("upstream");
    let disk = Tmpfs::mount(&dir, "64k")?;
    let inner = dir.join("upstream.conf");
    fs::copy(&site.upstream_file, &inner).unwrap();
    fs::write(
        &site.upstream_file,
        format!("include {};\n", inner.display()),
    )
    .unwrap();
    site.set(
        "nginx.upstream_file",
        &format!("{:?}", inner.display().to_string()),
    );
    site.upstream_file = inner;
    Some((site, disk))
}

/// An executable shell script in the site folder; its path.
fn script(site: &Site, name: &str, body: &str) -> String {
    let path = site.dir.join(name);
    fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// The site's nginx reload, as one shell command line.
fn nginx_reload_command(site: &Site) -> String {
    let prefix = site.dir.join("nginx");
    format!(
        "{} -p {} -c {} -e {} -s reload",
        Bed::shared().nginx.display(),
        prefix.display(),
        prefix.join("nginx.conf").display(),
        prefix.join("logs/error.log").display()
    )
}

fn reload_nginx(site: &Site) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(nginx_reload_command(site))
        .status()
        .expect("sh runs");
    assert!(status.success(), "nginx reloads");
}
