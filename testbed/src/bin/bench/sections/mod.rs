//! The sections of the report, one module each, named by what they measure; `settings`
//! states what every figure runs with.

pub mod canary;
pub mod daemon_footprint;
pub mod deploy_latency;
pub mod nginx_lab;
pub mod rollback_latency;
pub mod zero_downtime;

use crate::opts::Opts;
use crate::report::Section;

/// The instant test app's tags the deploy and rollback figures alternate between.
pub const INSTANT: [&str; 2] = ["v1", "v2"];
/// The app that listens one second after it starts, like a typical app.
pub const READY1S: &str = "ready1s";

/// The site settings every figure uses, stated once.
pub fn settings(opts: &Opts) -> Section {
    let mut s = Section::new("Settings", &["what", "value"]);
    let rows = [
        ("runs per figure (median, min-max)", opts.runs.to_string()),
        (
            "fieldtrack site",
            "health.interval 1s, health.timeout 2s, health.attempts 60, container.stop_timeout 10s, rollout.keep_images false; rollout.drain as stated per figure".into(),
        ),
        (
            "baseline.sh",
            "docker pull; docker run; curl /health up to 20 times 3 s apart; nginx -t; reload; docker rm -f old; prepend history".into(),
        ),
        (
            "nginx (test bed site)",
            "1 worker; proxy_http_version 1.1; Connection \"\"; proxy_next_upstream error timeout http_502 http_503; no upstream keepalive; worker_shutdown_timeout 10s; fieldtrack's nginx.pid_file is the site's (the drain waits for the old workers)".into(),
        ),
        (
            "load generator",
            format!(
                "{} threads, raw HTTP/1.1 GET /version through nginx, {} ms between a thread's requests",
                opts.threads,
                opts.gap.as_millis()
            ),
        ),
    ];
    for (what, value) in rows {
        s.rows.push(vec![what.to_string(), value]);
    }
    for (key, literal) in &opts.sets {
        s.rows.push(vec![
            "--set (every fieldtrack site)".into(),
            format!("{key} = {literal}"),
        ]);
    }
    s
}
