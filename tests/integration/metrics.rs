//! The daemon's Prometheus metrics, against the real Docker engine and nginx, through the
//! `fieldtrack` binary: converged, live image and digest, deployments by outcome (a rollback
//! during the drain included), probe failures and reconcile errors change as they happen; the
//! metrics address is the daemon's only listening socket, and without metrics it listens
//! nowhere. The sockets are read from /proc, not taken from the daemon's word.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use fieldtrack_testbed::Site;

#[test]
fn metrics_change_as_deployments_succeed_and_fail() {
    let mut site = Site::new();
    fast_health(&mut site);
    let listen = free_loopback_addr();
    site.set("metrics.listen", &toml_str(&listen.to_string()));
    let daemon = Spawned::start(&site, &["daemon"], None);
    let before = wait_for(PATIENCE, "the metrics endpoint", || scrape(listen));
    assert_eq!(
        metric(&before, "fieldtrack_converged"),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        metric(
            &before,
            "fieldtrack_deployments_total{outcome=\"succeeded\"}"
        ),
        Some(0.0),
        "{before}"
    );
    assert_eq!(
        listening_sockets(daemon.child.id()),
        [listen.to_string()],
        "the metrics address is the daemon's only listening socket"
    );

    let run = ft(&site, &["deploy", "v1"]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("the daemon"),
        "the daemon converged it:\n{}",
        run.stderr
    );
    let color = live_color(&site);
    let digest = repo_digest(&site, &site.image("v1"), &site.repository);
    let after_ok = wait_for(PATIENCE, "converged and live in the metrics", || {
        scrape(listen).filter(|m| metric(m, "fieldtrack_converged") == Some(1.0))
    });
    let expected_live = format!(
        "fieldtrack_live_info{{color=\"{color}\",image=\"{}\",digest=\"{digest}\"}} 1",
        site.image("v1")
    );
    assert!(
        after_ok.lines().any(|l| l == expected_live),
        "{expected_live} in:\n{after_ok}"
    );
    assert_eq!(
        metric(
            &after_ok,
            "fieldtrack_deployments_total{outcome=\"succeeded\"}"
        ),
        Some(1.0),
        "{after_ok}"
    );
    assert_eq!(
        metric(
            &after_ok,
            "fieldtrack_deployments_total{outcome=\"failed\"}"
        ),
        Some(0.0),
        "{after_ok}"
    );
    assert!(
        metric(&after_ok, "fieldtrack_last_deployment_duration_seconds").is_some_and(|s| s > 0.0),
        "{after_ok}"
    );

    ft(&site, &["deploy", "unhealthy"]).expect_code(1);

    let after_failure = wait_for(PATIENCE, "the failure in the metrics", || {
        scrape(listen)
            .filter(|m| metric(m, "fieldtrack_deployments_total{outcome=\"failed\"}") == Some(1.0))
    });
    assert_eq!(
        metric(&after_failure, "fieldtrack_converged"),
        Some(0.0),
        "{after_failure}"
    );
    assert_eq!(
        metric(
            &after_failure,
            "fieldtrack_deployments_total{outcome=\"succeeded\"}"
        ),
        Some(1.0),
        "{after_failure}"
    );
    assert!(
        metric(&after_failure, "fieldtrack_health_probe_failures_total").is_some_and(|n| n > 0.0),
        "{after_failure}"
    );
    assert_eq!(
        metric(
            &after_failure,
            "fieldtrack_reconcile_errors_total{kind=\"permanent\"}"
        ),
        Some(1.0),
        "{after_failure}"
    );
    assert!(
        after_failure.lines().any(|l| l == expected_live),
        "v1 is still what is live:\n{after_failure}"
    );
    drop(daemon);
}

#[test]
fn metrics_count_a_rollback_during_the_drain_and_the_daemon_converges_on_the_previous_image() {
    let mut site = Site::new();
    let listen = free_loopback_addr();
    site.set("metrics.listen", &toml_str(&listen.to_string()));
    site.set("rollout.drain", "\"6s\"");
    let _daemon = Spawned::start(&site, &["daemon"], None);
    wait_for(PATIENCE, "the metrics endpoint", || scrape(listen));
    ft(&site, &["deploy", "v1"]).expect_code(0);
    let failures_before = wait_for(PATIENCE, "v1 counted", || {
        scrape(listen)
            .filter(|m| {
                metric(m, "fieldtrack_deployments_total{outcome=\"succeeded\"}") == Some(1.0)
            })
            .and_then(|m| metric(&m, "fieldtrack_health_probe_failures_total"))
    });

    ft(&site, &["deploy", "flaky"]).expect_code(1);

    // The rewritten desired file names v1 again, which the daemon converges on.
    let after = wait_for(PATIENCE, "the rollback counted and v1 converged", || {
        scrape(listen).filter(|m| {
            metric(m, "fieldtrack_deployments_total{outcome=\"rolled_back\"}") == Some(1.0)
                && metric(m, "fieldtrack_converged") == Some(1.0)
        })
    });
    assert!(
        metric(&after, "fieldtrack_health_probe_failures_total")
            .is_some_and(|n| n >= failures_before + 3.0),
        "the three failed probes of the drain are counted ({failures_before} before):\n{after}"
    );
    let color = live_color(&site);
    let live = format!(
        "fieldtrack_live_info{{color=\"{color}\",image=\"{}\",",
        site.image("v1")
    );
    assert!(
        after.lines().any(|l| l.starts_with(&live)),
        "{live} in:\n{after}"
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    wait_for(PATIENCE, "status.json converged on v1", || {
        let status = status(&site);
        (status["phase"] == "converged" && status["desired"] == "v1").then_some(())
    });
    assert_converged(&site, "v1");
    assert_eq!(history(&site), "v1\n");
}

#[test]
fn daemon_without_metrics_opens_no_network_port() {
    let site = Site::new();
    let mut daemon = Spawned::start(&site, &["daemon"], None);
    daemon.wait_for_line("daemon started");

    let run = ft(&site, &["deploy", "v1"]);

    run.expect_code(0);
    assert!(
        run.stderr.contains("the daemon"),
        "the daemon converged it:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert!(
        matches!(daemon.child.try_wait(), Ok(None)),
        "the daemon still runs"
    );
    assert_eq!(
        listening_sockets(daemon.child.id()),
        Vec::<String>::new(),
        "the daemon listens nowhere"
    );
}

/// A loopback address with a port free right now.
fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().unwrap()
}

/// GET /metrics on a raw connection; the body on a 200, None otherwise.
fn scrape(addr: SocketAddr) -> Option<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200 ").then(|| body.to_string())
}

/// The value of the sample named exactly `series` (name with its labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a sample value"))
}

/// The TCP sockets `pid` listens on, as `ip:port` (IPv6 as the kernel's hex), from the
/// socket inodes among its file descriptors and the kernel's tables.
fn listening_sockets(pid: u32) -> Vec<String> {
    let fd_dir = format!("/proc/{pid}/fd");
    let inodes: HashSet<String> = fs::read_dir(&fd_dir)
        .unwrap_or_else(|e| panic!("{fd_dir}: {e}"))
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let mut listening = Vec::new();
    for table in ["tcp", "tcp6"] {
        let path = Path::new("/proc")
            .join(pid.to_string())
            .join("net")
            .join(table);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.contains(*inode) {
                continue;
            }
            let (ip, port) = local.split_once(':').expect("ip:port");
            let port = u16::from_str_radix(port, 16).expect("a hex port");
            let ip = match u32::from_str_radix(ip, 16) {
                Ok(v4) if ip.len() == 8 => std::net::Ipv4Addr::from(v4.to_le_bytes()).to_string(),
                _ => format!("[{ip}]"),
            };
            listening.push(format!("{ip}:{port}"));
        }
    }
    listening.sort();
    listening
}
