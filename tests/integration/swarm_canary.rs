//! Canary steps on the real three-node Swarm: nginx, in the edge namespace, shares the
//! traffic between the stable color's replicas and the candidate's by weight in the one
//! upstream file, each server weighted so that the canary's share holds whatever the number
//! of replicas on each side, and each step is judged from the same access log as on one
//! server (a line's side told by its port). A load generator in the edge namespace counts
//! who answered; what nginx serves, the upstream file, the services and the state files are
//! the other observations.
//!
//! These tests measure shares under load, so they take the cluster alone ([`Swarm::faults`]):
//! another test's deployments on the same two cores would only add noise.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::canary::{count, first_seen, server_lines, Answer, Load, Watch};
use crate::common::swarm::*;
use crate::common::{wait_until, PATIENCE};
use fieldtrack_testbed::{Swarm, SwarmSite};

/// Clients of nginx, as in the single-engine canary tests: a 10% step gets hundreds of
/// requests in its window, with a short gap so the shared machine keeps some breath.
const THREADS: usize = 4;
const GAP: Duration = Duration::from_millis(2);

/// How far a step's measured share may be from its weight, in points. nginx's smooth
/// weighted round robin is exact over each cycle of its total weight in each worker (10
/// requests at 10% here, 6 at 50%), and the site's nginx runs one: a window of at least 200
/// requests cuts at most part of a cycle at each end, under 1.5 points. The rest covers what
/// is not the weights' doing: a request nginx retries on another server (`proxy_next_upstream
/// error timeout`) when a task's node is slow to accept. The clients open a connection per
/// request, so none rides an old worker's connection into the window (it starts a tick after
/// nginx took the step's weights). The old code's weights (the same on every server whatever
/// the replicas) would give 3.6% and 25% here; measured on the bed: 10.0% and 50.0% of some
/// 4,400 requests each.
const TOLERANCE: f64 = 3.0;

/// A site of three replicas (one per node), a patient health gate, a short drain, and
/// `[canary]` with `steps`, at least `min_requests` canary requests a step, and a latency
/// bound wide enough that two builds of the same program never fail it (their p95s are a
/// millisecond or two, which nginx logs in whole milliseconds).
fn canary_site(steps: &str, min_requests: u64) -> SwarmSite {
    let mut site = SwarmSite::new();
    patient_health(&mut site);
    site.set("rollout.drain", "\"1s\"");
    site.set("swarm.replicas", "3");
    site.set("canary.steps", steps);
    site.set("canary.min_requests", &min_requests.to_string());
    site.set("canary.max_latency_ratio", "50.0");
    site
}

fn node_addrs(swarm: &Swarm) -> BTreeSet<Ipv4Addr> {
    swarm.nodes.iter().map(|n| n.addr).collect()
}

/// The load generator, in the edge namespace where the site's nginx listens.
fn load(site: &SwarmSite, path: &str) -> Load {
    Load::start_at(
        site.nginx_addr(),
        Some(site.swarm.edge_netns.clone()),
        path,
        THREADS,
        GAP,
    )
}

/// status.json's `canary` (null when none runs), each value with when it was first seen.
fn watch_canary(site: &SwarmSite) -> Watch<serde_json::Value> {
    let path = site.state_dir.join("status.json");
    Watch::start(move || {
        let status: serde_json::Value = serde_json::from_slice(&fs::read(&path).ok()?).ok()?;
        Some(status["canary"].clone())
    })
}

/// The upstream file's `server` lines, each version with when it was first seen.
fn watch_servers(site: &SwarmSite) -> Watch<Vec<String>> {
    let path = site.upstream_file.clone();
    Watch::start(move || Some(server_lines(&fs::read_to_string(&path).ok()?)))
}

/// The audit log's records of one event (`deploy`, `canary_step`).
fn audit_of(site: &SwarmSite, event: &str) -> Vec<serde_json::Value> {
    fs::read_to_string(site.state_dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("an audit line is JSON"))
        .filter(|r| r["event"] == event)
        .collect()
}

/// The port of a color of the site.
fn port_of(site: &SwarmSite, color: &str) -> u16 {
    if color == "blue" {
        site.blue_port
    } else {
        site.green_port
    }
}

#[test]
fn on_swarm_each_step_gets_its_share_whatever_the_replicas_on_each_side() {
    let swarm = Swarm::shared();
    let _alone = swarm.faults();
    let mut site = canary_site(
        r#"[{ weight = 10, pause = "6s" }, { weight = 50, pause = "6s" }]"#,
        20,
    );
    deploy_ok(&site, "v1");
    let stable = live_color(&site);
    let canary = idle_color(&site);
    let stable_servers = upstream_servers(&site);
    assert_eq!(stable_servers.len(), 3, "{}", upstream(&site));
    // The candidate runs one replica against the stable color's three: the same weight on
    // every server would give it 1 request in 28 at 10%.
    site.set("swarm.replicas", "1");

    let canary_seen = watch_canary(&site);
    let servers_seen = watch_servers(&site);
    let load = load(&site, "/version");
    let run = ft(&site, &["deploy", "v2"]);
    let deployed = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let answers = load.stop();
    let seen = canary_seen.stop();
    let files = servers_seen.stop();

    run.expect_code(0);
    for (step, weight) in [(1, 10), (2, 50)] {
        let from = first_seen(&seen, step)
            .unwrap_or_else(|| panic!("status.json never showed step {step}: {seen:?}"));
        // Inside the 6 s pause: no request of the step before or after is counted.
        let to = from + Duration::from_secs(3);
        let window: Vec<&Answer> = answers.iter().filter(|a| a.within(from, to)).collect();
        let (v1, v2) = (count(&window, "v1"), count(&window, "v2"));
        assert_eq!(
            v1 + v2,
            window.len(),
            "every request of step {step} answered by v1 or v2: {window:?}"
        );
        assert!(
            window.len() >= 200,
            "step {step}: only {} requests in its window, too few to judge a share",
            window.len()
        );
        let share = v2 as f64 * 100.0 / window.len() as f64;
        eprintln!(
            "swarm step {step} ({weight}%, 3 stable replicas, 1 canary): v2 answered {v2} of {} requests ({share:.1}%)",
            window.len()
        );
        assert!(
            (share - weight as f64).abs() <= TOLERANCE,
            "step {step}: v2 answered {share:.1}% of {} requests, not {weight}% ± {TOLERANCE}",
            window.len()
        );
        let shown = &seen
            .iter()
            .find(|(_, c)| c["step"] == step)
            .expect("seen above")
            .1;
        assert_eq!(shown["weight"], weight, "{shown:#}");
        assert_eq!(shown["image"], "v2", "{shown:#}");
    }
    // The upstream file named the three stable servers and the canary's one, each weighted
    // for the share: 3 × 3 against 1 at 10%, 3 × 1 against 3 at 50%.
    let stable_port = port_of(&site, stable);
    let canary_port = port_of(&site, canary);
    for (stable_weight, canary_weight) in [(3, 1), (1, 3)] {
        let found = files.iter().any(|(_, lines)| {
            let stable_lines: Vec<&String> = lines
                .iter()
                .filter(|l| l.contains(&format!(":{stable_port} ")))
                .collect();
            let canary_lines: Vec<&String> = lines
                .iter()
                .filter(|l| l.contains(&format!(":{canary_port} ")))
                .collect();
            stable_lines.len() == 3
                && canary_lines.len() == 1
                && stable_lines
                    .iter()
                    .all(|l| l.ends_with(&format!(" weight={stable_weight};")))
                && canary_lines[0].ends_with(&format!(" weight={canary_weight};"))
        });
        assert!(
            found,
            "a step's file weighted the stable servers {stable_weight} and the canary {canary_weight}: {files:#?}"
        );
    }
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(
        failed.is_empty(),
        "no request failed through the steps and the switch: {failed:?}"
    );
    let after: Vec<&Answer> = answers.iter().filter(|a| a.sent >= deployed).collect();
    assert!(!after.is_empty());
    assert_eq!(
        count(&after, "v2"),
        after.len(),
        "after the last step v2 alone answers"
    );

    assert_eq!(live_color(&site), canary);
    assert_eq!(upstream_servers(&site).len(), 1, "{}", upstream(&site));
    wait_until(PATIENCE, "the stable color scaled to 0", || {
        replicas(&site, stable) == Some(0)
    });
    assert_eq!(history(&site), "v2\nv1\n");
    assert!(status(&site)["canary"].is_null());
    let steps = audit_of(&site, "canary_step");
    assert_eq!(steps.len(), 2, "one audit record a step: {steps:#?}");
    for record in &steps {
        assert_eq!(record["outcome"], "succeeded", "{record:#}");
    }
}

#[test]
fn on_swarm_a_canary_answering_errors_is_called_off_at_step_1_and_the_stable_replicas_serve_alone()
{
    let swarm = Swarm::shared();
    let _alone = swarm.faults();
    let site = canary_site(
        r#"[{ weight = 10, pause = "20s" }, { weight = 50, pause = "20s" }]"#,
        30,
    );
    deploy_ok(&site, "v1");
    let stable = live_color(&site);
    let candidate = idle_color(&site);
    let before = upstream(&site);

    let load = load(&site, "/");
    let run = ft(&site, &["deploy", "err5"]);
    let ended = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let answers = load.stop();

    run.expect_code(1)
        .says(&["err5 failed after the switch", "canary step 1 of 2 (10%)"]);
    let desired = desired(&site).expect("the desired file");
    assert!(desired.contains("image = \"v1\""), "{desired}");
    assert_eq!(served(&site).as_deref(), Some("v1"));
    // Back on the stable color's three replicas, as before the deployment.
    assert_eq!(live_color(&site), stable);
    assert_eq!(
        upstream_addrs(&site),
        node_addrs(swarm),
        "{}",
        upstream(&site)
    );
    assert!(!upstream(&site).contains("weight="), "{}", upstream(&site));
    assert_eq!(
        server_lines(&upstream(&site)),
        server_lines(&before),
        "the stable servers as they were"
    );
    wait_until(PATIENCE, "the candidate scaled to 0", || {
        replicas(&site, candidate).is_none_or(|n| n == 0)
    });
    assert_eq!(history(&site), "v1\n");
    assert!(status(&site)["canary"].is_null());

    // Every failure the clients saw is err5's own 500: none of the stable color, no request
    // lost in the switches (no 502, no connection error).
    let failed: Vec<&Answer> = answers.iter().filter(|a| a.status != 200).collect();
    assert!(!failed.is_empty(), "err5 answered some requests with 500");
    for a in &failed {
        assert_eq!(
            (a.status, a.body.as_str()),
            (500, "error from err5"),
            "{a:?}"
        );
    }
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(
        count(&ok, "v1") + count(&ok, "err5"),
        ok.len(),
        "v1 or err5 answered"
    );
    let after: Vec<&Answer> = answers.iter().filter(|a| a.sent >= ended).collect();
    assert!(!after.is_empty());
    assert_eq!(count(&after, "v1"), after.len(), "then v1 alone");
    eprintln!(
        "swarm bad canary: {} requests, {} answered by err5, {} failed",
        answers.len(),
        count(&answers.iter().collect::<Vec<_>>(), "err5") + failed.len(),
        failed.len()
    );

    let steps = audit_of(&site, "canary_step");
    assert_eq!(steps.len(), 1, "step 2 never ran: {steps:#?}");
    assert_eq!(steps[0]["outcome"], "rolled_back", "{:#}", steps[0]);
}
