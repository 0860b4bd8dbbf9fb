//! The harness of the tests on the real multi-node Swarm (the `swarm` module): fieldtrack run
//! inside the edge namespace against a [`SwarmSite`], and what it left in the world read
//! back: the state files, the upstream file's `server ADDR:PORT;` lines, and the services'
//! tasks per node as the manager sees them.
//!
//! The names follow the single-engine harness (`ft`, `deploy_ok`, `status`, …), taking a
//! [`SwarmSite`] instead of a `Site`, so a swarm test reads like the others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};

use fieldtrack_testbed::{Swarm, SwarmSite};

use super::{bytes, Run, Spawned};

/// The binary run inside the edge namespace, aimed at the site's config, with nothing
/// inherited that could steer it; arguments to add.
pub fn command(site: &SwarmSite, args: &[&str]) -> Command {
    let mut cmd = Swarm::edge_command(env!("CARGO_BIN_EXE_fieldtrack"));
    cmd.current_dir(&site.dir)
        .env_remove("FIELDTRACK_CONFIG")
        .env_remove("FIELDTRACK_TEST_PAUSE_AT")
        .env_remove("FIELDTRACK_LOG")
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .arg("--config")
        .arg(&site.config_path)
        .args(args);
    cmd
}

/// Runs `fieldtrack --config <site> ARGS...` in the edge namespace to completion.
pub fn ft(site: &SwarmSite, args: &[&str]) -> Run {
    Run::of(&mut command(site, args))
}

/// Starts `fieldtrack ARGS...` in the edge namespace, with `FIELDTRACK_TEST_PAUSE_AT=point`
/// when given; its stderr arrives line by line. Its pid is fieldtrack's (nsenter execs).
pub fn spawn(site: &SwarmSite, args: &[&str], pause_at: Option<&str>) -> Spawned {
    let mut cmd = command(site, args);
    if let Some(point) = pause_at {
        cmd.env("FIELDTRACK_TEST_PAUSE_AT", point);
    }
    Spawned::of(cmd)
}

/// What the site's nginx answers on `/version` (the live app's tag), None on anything but a
/// 200.
pub fn served(site: &SwarmSite) -> Option<String> {
    site.served_version()
}

/// `deploy TAG`, which must succeed, and nginx must then serve TAG.
#[track_caller]
pub fn deploy_ok(site: &SwarmSite, tag: &str) {
    let run = ft(site, &["deploy", tag]);
    run.expect_code(0);
    assert_eq!(
        served(site).as_deref(),
        Some(tag),
        "nginx serves {tag} after:\n{}",
        run.stderr
    );
}

/// The nginx upstream file's text.
pub fn upstream(site: &SwarmSite) -> String {
    let bytes = bytes(&site.upstream_file).expect("the upstream file exists");
    String::from_utf8(bytes).expect("the upstream file is UTF-8")
}

/// The upstream file's servers (`server ADDR:PORT [params];`), in file order.
pub fn upstream_servers(site: &SwarmSite) -> Vec<SocketAddr> {
    upstream(site)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|rest| {
            let addr = rest
                .split(|c: char| c == ';' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            addr.parse()
                .unwrap_or_else(|e| panic!("a server address, not {addr:?}: {e}"))
        })
        .collect()
}

/// The node addresses the upstream file lists, whatever their port.
pub fn upstream_addrs(site: &SwarmSite) -> BTreeSet<Ipv4Addr> {
    upstream_servers(site)
        .iter()
        .filter_map(|s| match s {
            SocketAddr::V4(v4) => Some(*v4.ip()),
            SocketAddr::V6(_) => None,
        })
        .collect()
}

/// The one port every server line of the upstream file names (which tells the live color).
#[track_caller]
pub fn upstream_port(site: &SwarmSite) -> u16 {
    let ports: BTreeSet<u16> = upstream_servers(site).iter().map(|s| s.port()).collect();
    assert_eq!(
        ports.len(),
        1,
        "one port in the upstream file:\n{}",
        upstream(site)
    );
    *ports.first().unwrap()
}

/// The color the upstream file points at.
#[track_caller]
pub fn live_color(site: &SwarmSite) -> &'static str {
    match upstream_port(site) {
        p if p == site.blue_port => "blue",
        p if p == site.green_port => "green",
        p => panic!("upstream points at {p}, neither blue nor green"),
    }
}

/// The color nginx does not point at.
#[track_caller]
pub fn idle_color(site: &SwarmSite) -> &'static str {
    match live_color(site) {
        "blue" => "green",
        _ => "blue",
    }
}

/// A color's tasks per node name (unassigned tasks under "-"): each task as
/// `state/desired`, e.g. `running/running` or `shutdown/shutdown`.
pub fn tasks_per_node(site: &SwarmSite, color: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for task in site.tasks(color) {
        map.entry(task.node.unwrap_or_else(|| "-".to_string()))
            .or_default()
            .push(format!("{}/{}", task.state, task.desired));
    }
    map
}

/// The nodes (by name) where a task of the color runs and is meant to.
pub fn running_nodes(site: &SwarmSite, color: &str) -> BTreeSet<String> {
    site.tasks(color)
        .into_iter()
        .filter(|t| t.state == "running" && t.desired == "running")
        .filter_map(|t| t.node)
        .collect()
}

/// A service's replica count as its spec says (`docker service inspect`), None when the
/// service does not exist.
pub fn replicas(site: &SwarmSite, color: &str) -> Option<u64> {
    let out = site
        .docker()
        .args([
            "service",
            "inspect",
            "--format",
            "{{.Spec.Mode.Replicated.Replicas}}",
            &site.service(color),
        ])
        .output()
        .expect("docker runs");
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The image a color's service is set to run (`Spec.TaskTemplate.ContainerSpec.Image`).
pub fn service_image(site: &SwarmSite, color: &str) -> Option<String> {
    let out = site
        .docker()
        .args([
            "service",
            "inspect",
            "--format",
            "{{.Spec.TaskTemplate.ContainerSpec.Image}}",
            &site.service(color),
        ])
        .output()
        .expect("docker runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The history file as text, "" when missing.
pub fn history(site: &SwarmSite) -> String {
    String::from_utf8(bytes(&site.history_file).unwrap_or_default()).expect("history is UTF-8")
}

/// status.json as JSON.
pub fn status(site: &SwarmSite) -> serde_json::Value {
    let path = site.state_dir.join("status.json");
    let text = bytes(&path).unwrap_or_else(|| panic!("{} exists", path.display()));
    serde_json::from_slice(&text).expect("status.json is JSON")
}

/// The desired file's text, None when missing.
pub fn desired(site: &SwarmSite) -> Option<String> {
    bytes(&site.desired_file).map(|b| String::from_utf8(b).expect("the desired file is UTF-8"))
}

/// Health gate settings for a candidate meant to become healthy: two minutes, far above
/// the few seconds three tasks take to start here, so that a loaded machine fails no test.
/// A test waits for what it expects; how fast it comes is the bench's business.
pub fn patient_health(site: &mut SwarmSite) {
    site.set("health.interval", "\"1s\"");
    site.set("health.attempts", "120");
}

/// Health gate settings for an image that never answers its probe (`unhealthy`): its
/// failure is the gate's deadline, which no speed of the machine can make pass, so a short
/// one loses nothing.
pub fn short_health(site: &mut SwarmSite) {
    site.set("health.interval", "\"1s\"");
    site.set("health.attempts", "5");
}
