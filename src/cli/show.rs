//! `fieldtrack status` and `fieldtrack history`: read-only views of the state files. Text
//! that came from outside (a log tail in the message, a note) is printed through
//! [`printable`]; `--json` is safe as it is, since JSON escapes every control character.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::terminal::printable;
use super::view::{Daemon, View};
use super::CliError;
use crate::config::{Config, RuntimeKind};
use crate::desired::{Desired, DesiredError};
use crate::nginx_conf::upstream::{parse_port, parse_servers};
use crate::state::status::{
    CanaryProgress, Phase, PreviewProgress, Status, Step, Warm, WindowFigures,
};

pub fn status(cfg: &Config, json: bool) -> Result<u8, CliError> {
    let report = StatusReport::gather(cfg)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).unwrap_or_default()
        );
    } else {
        print!("{}", report.text(SystemTime::now()));
    }
    Ok(0)
}

/// What `status` shows, read once: the state (through the user's door), the desired file
/// and the upstream file.
struct StatusReport {
    /// The last status written; None before the first pass.
    status: Option<Status>,
    /// The history's images, newest first.
    history: Vec<String>,
    daemon: Daemon,
    desired: Result<Desired, DesiredError>,
    upstream_file: PathBuf,
    /// The upstream file's loopback port; None without a file or such a server.
    upstream_port: Option<u16>,
    /// Every server of the upstream file, on any address.
    servers: Vec<SocketAddr>,
    /// `[runtime] kind = "swarm"`: a color is a service, the file has a server per task.
    swarm: bool,
}

impl StatusReport {
    fn gather(cfg: &Config) -> Result<StatusReport, CliError> {
        let view = View::read(cfg)?;
        let upstream_text = std::fs::read_to_string(&cfg.nginx.upstream_file).ok();
        let name = &cfg.nginx.upstream_name;
        Ok(StatusReport {
            history: view.images(),
            daemon: view.daemon,
            status: view.status,
            desired: Desired::load(&cfg.desired_file, cfg),
            upstream_file: cfg.nginx.upstream_file.clone(),
            upstream_port: upstream_text.as_deref().and_then(|t| parse_port(t, name)),
            servers: upstream_text
                .as_deref()
                .map(|t| parse_servers(t, name))
                .unwrap_or_default(),
            swarm: cfg.runtime == RuntimeKind::Swarm,
        })
    }

    /// `status --json`: status.json as written, with what else the report knows beside it.
    fn json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.status).unwrap_or(serde_json::Value::Null);
        if value.is_null() {
            value = json!({ "phase": null });
        }
        value["history"] = json!(self.history);
        value["daemon"] = match &self.daemon {
            Daemon::Running { pid } => json!({ "running": true, "pid": pid }),
            Daemon::Busy { holder } => json!({ "running": false, "busy": holder }),
            Daemon::NotRunning => json!({ "running": false }),
        };
        value["upstream_port"] = json!(if self.swarm {
            self.servers.first().map(|s| s.port())
        } else {
            self.upstream_port
        });
        if self.swarm {
            value["upstream_servers"] = json!(self.server_list());
        }
        value["desired_file_error"] = json!(self.desired.as_ref().err().map(|e| e.to_string()));
        value
    }

    /// The screen, one `Name      : value` line each; text from outside made printable.
    fn text(&self, now: SystemTime) -> String {
        let mut out = String::new();
        self.desired_lines(&mut out);
        line(&mut out, "Daemon", &daemon_line(&self.daemon));
        match &self.status {
            None => out.push_str("Phase     : no reconcile has run yet\n"),
            Some(s) => self.status_lines(s, now, &mut out),
        }
        out.push_str(&self.upstream_line());
        out.push('\n');
        if self.history.is_empty() {
            out.push_str("History   : empty\n");
        } else {
            line(&mut out, "History", &self.history.join(", "));
        }
        out
    }

    fn desired_lines(&self, out: &mut String) {
        match &self.desired {
            Ok(d) => {
                let mut desired = format!("{} (generation {}", d.image, d.generation);
                if let Some(by) = &d.by {
                    desired.push_str(&format!(", by {}", printable(by)));
                }
                desired.push_str(if d.paused { ", paused)" } else { ")" });
                out.push_str(&format!("Desired   : {desired}\n"));
                if let Some(note) = &d.note {
                    line(out, "Note", note);
                }
            }
            Err(e) => line(out, "Desired", &format!("unusable: {e}")),
        }
    }

    /// What the last status written says: live, phase, canary, warm color, message, tasks.
    fn status_lines(&self, s: &Status, now: SystemTime, out: &mut String) {
        match &s.live {
            Some(live) if self.swarm => out.push_str(&format!(
                "Live      : {} {} (service {}, port {} on each node)\n",
                printable(&live.color),
                printable(&live.image),
                printable(&live.container),
                live.port
            )),
            Some(live) => out.push_str(&format!(
                "Live      : {} {} ({}, 127.0.0.1:{})\n",
                printable(&live.color),
                printable(&live.image),
                printable(&live.container),
                live.port
            )),
            None => out.push_str("Live      : nothing\n"),
        }
        let step = s.step.map(|st| format!(" ({st})")).unwrap_or_default();
        // A status left progressing by a process that is gone says so: nothing moves
        // until a daemon (or a command) takes it up again.
        let stalled = if s.phase == Phase::Progressing && self.daemon == Daemon::NotRunning {
            if s.step == Some(Step::Preview) {
                // Nothing moves a preview but the operator: without a daemon, only its
                // probes stop (`promote` runs the switch itself).
                ", no daemon probes it"
            } else {
                ", stalled: no process works on it"
            }
        } else {
            ""
        };
        out.push_str(&format!(
            "Phase     : {}{step} since {}{stalled}\n",
            s.phase,
            printable(&s.since)
        ));
        if let Some(digest) = &s.digest {
            line(out, "Digest", digest);
        }
        if let Some(canary) = s
            .canary
            .as_ref()
            .filter(|_| s.phase == Phase::Progressing && s.step == Some(Step::Canary))
        {
            for canary_line in canary_lines(canary, now) {
                out.push_str(&format!("{}\n", printable(&canary_line)));
            }
        }
        if let Some(preview) = s
            .preview
            .as_ref()
            .filter(|_| s.phase == Phase::Progressing && s.step == Some(Step::Preview))
        {
            line(out, "Preview", &preview_line(preview, now));
        }
        if let Some(warm) = &s.warm {
            line(out, "Previous", &warm_line(warm, now));
        }
        if let Some(message) = &s.message {
            line(out, "Message", message);
        }
        line(out, "Updated", &s.updated_at);
        task_lines(s, out);
    }

    /// Where the upstream file sends traffic.
    fn upstream_line(&self) -> String {
        let file = self.upstream_file.display();
        let servers = self.server_list().join(", ");
        if self.swarm {
            if self.servers.is_empty() {
                format!("Upstream  : {file} names no server")
            } else {
                format!("Upstream  : {file} -> {servers}")
            }
        } else if self.servers.len() > 1 {
            // A canary step: both colors, by weight.
            format!("Upstream  : {file} -> {servers} (shared by weight: a canary step)")
        } else {
            match self.upstream_port {
                Some(port) => format!("Upstream  : {file} -> 127.0.0.1:{port}"),
                None => format!("Upstream  : {file} names no server"),
            }
        }
    }

    fn server_list(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.to_string()).collect()
    }
}

/// On Docker Swarm, each color's tasks per node as the last pass saw them.
fn task_lines(s: &Status, out: &mut String) {
    for color in &s.replicas {
        out.push_str(&format!(
            "Tasks     : {} ({}), as the last pass saw them:\n",
            printable(&color.color),
            printable(&color.service)
        ));
        for r in &color.replicas {
            let message = r
                .message
                .as_deref()
                .map(|m| format!(": {}", printable(m)))
                .unwrap_or_default();
            out.push_str(&format!(
                "            {:<16} {:<22} {}{message}\n",
                printable(&r.node),
                printable(r.address.as_deref().unwrap_or("-")),
                printable(&r.state)
            ));
        }
    }
}

/// `Name      : value`, the value made printable.
fn line(out: &mut String, name: &str, value: &str) {
    out.push_str(&format!("{:<10}: {}\n", name, printable(value)));
}

pub fn history(cfg: &Config, json: bool) -> Result<u8, CliError> {
    let entries = View::read(cfg)?.history;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).unwrap_or_default()
        );
        return Ok(0);
    }
    if entries.is_empty() {
        println!(
            "No deployment history found in {}.",
            cfg.history_file.display()
        );
        return Ok(0);
    }
    for e in &entries {
        let mut line = format!("{:>2}. {}", e.n, e.image);
        if e.current {
            line.push_str(" (current)");
        }
        if e.rolled_back_from {
            line.push_str(" [rolled back from]");
        }
        if let Some(at) = &e.deployed_at {
            line.push_str(&format!(
                "  deployed {at} via {}",
                e.trigger.as_deref().unwrap_or("cli")
            ));
            if let Some(by) = &e.by {
                line.push_str(&format!(" by {by}"));
            }
            if let Some(digest) = &e.digest {
                line.push_str(&format!("  {digest}"));
            }
            if let Some(note) = &e.note {
                line.push_str(&format!("  \"{note}\""));
            }
        }
        println!("{}", printable(&line));
    }
    Ok(0)
}

/// Whether a daemon follows the desired file, in the operator's words.
fn daemon_line(daemon: &Daemon) -> String {
    match daemon {
        Daemon::Running { pid: Some(pid) } => format!("running (pid {pid})"),
        Daemon::Running { pid: None } => "running".to_string(),
        Daemon::Busy { holder } => format!("not running; {holder} holds the reconcile lock"),
        Daemon::NotRunning => "not running: nothing converges the desired file until it starts \
             (`systemctl start fieldtrack`, or `fieldtrack daemon`)"
            .to_string(),
    }
}

/// `v2 on green (api-green), awaits promotion since 2026-12-07T18:30:00Z (12m); reachable
/// through upstream api_preview`.
fn preview_line(p: &PreviewProgress, now: SystemTime) -> String {
    let age = humantime::parse_rfc3339(&p.since)
        .ok()
        .and_then(|since| now.duration_since(since).ok())
        .map(|d| {
            let d = Duration::from_secs(d.as_secs() / 60 * 60);
            match d.is_zero() {
                true => " (under a minute)".to_string(),
                false => format!(" ({})", humantime::format_duration(d)),
            }
        })
        .unwrap_or_default();
    let failing = match p.probe_failures {
        0 => String::new(),
        n => format!("; {n} failed health probe(s) in a row"),
    };
    format!(
        "{} on {} ({}), awaits promotion since {}{age}; reachable through upstream {}{failing}",
        p.image, p.color, p.container, p.since, p.upstream
    )
}

/// The canary step running: who gets what share, how long is left, and the window's
/// figures so far.
fn canary_lines(c: &CanaryProgress, now: SystemTime) -> Vec<String> {
    let left = match c.step_ends.as_deref().map(humantime::parse_rfc3339) {
        None => "waiting for fieldtrack promote (or abort)".to_string(),
        Some(Ok(ends)) => match ends.duration_since(now) {
            Ok(left) => format!(
                "{} left",
                humantime::format_duration(Duration::from_secs(left.as_secs()))
            ),
            Err(_) => "pause over, waiting for enough requests".to_string(),
        },
        Some(Err(_)) => format!(
            "ends at an unreadable time {}",
            c.step_ends.as_deref().unwrap_or("")
        ),
    };
    let side = |f: &WindowFigures| {
        let p95 = f
            .p95_ms
            .map(|ms| format!(", p95 {ms} ms"))
            .unwrap_or_default();
        format!(
            "{} requests, {} failed{p95}",
            f.requests,
            f.errors.max(f.failed_tries)
        )
    };
    vec![
        format!(
            "Canary    : {} on {} ({}), step {} of {}: {}% of the traffic, {} keeps {}%; {left}",
            c.image,
            c.color,
            c.container,
            c.step,
            c.steps,
            c.weight,
            c.stable_color,
            100 - c.weight.min(100)
        ),
        format!(
            "Window    : canary {}; stable {}",
            side(&c.canary),
            side(&c.stable)
        ),
        format!("Judgement : {}", c.judgement),
    ]
}

/// `v2 warm until 14:05 (api-blue): ...`, the previous color kept running out of nginx, its
/// window's end in the server's local time (with the date when not today).
fn warm_line(warm: &Warm, now: SystemTime) -> String {
    let Some(until) = warm.until_time() else {
        return format!(
            "{} kept warm, until an unreadable time {}",
            warm.image, warm.until
        );
    };
    if until <= now {
        return format!(
            "{} was kept warm until {} ({}): the next pass removes it",
            warm.image,
            local_clock(until, now),
            warm.container
        );
    }
    format!(
        "{} warm until {} ({}): a rollback to it is a pure nginx switch",
        warm.image,
        local_clock(until, now),
        warm.container
    )
}

/// `14:05 CET`, or `2026-11-27 14:05 CET` when that is not today, in the local time zone.
fn local_clock(at: SystemTime, now: SystemTime) -> String {
    // As localtime(3) does: $TZ, else /etc/localtime, else UTC.
    let tz = jiff::tz::TimeZone::try_system().unwrap_or(jiff::tz::TimeZone::UTC);
    let local = |t: SystemTime| -> Option<jiff::ZonedDateTime> {
        t.duration_since(UNIX_EPOCH).ok()?;
        Some(
            jiff::Timestamp::try_from(t)
                .ok()?
                .to_zoned_datetime(tz.clone()),
        )
    };
    let Some(local_at) = local(at) else {
        return humantime::format_rfc3339_seconds(at).to_string();
    };
    let offset = local_at.time_zone().to_offset_info(local_at.timestamp());
    let zone = match offset.abbreviation() {
        "" => String::new(),
        name => format!(" {name}"),
    };
    let clock = format!("{:02}:{:02}{zone}", local_at.hour(), local_at.minute());
    let same_day = local(now).is_some_and(|n| n.date() == local_at.date());
    if same_day {
        clock
    } else {
        format!(
            "{:04}-{:02}-{:02} {clock}",
            local_at.year(),
            local_at.month(),
            local_at.day()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn warm(until: SystemTime) -> Warm {
        Warm {
            color: crate::model::Color::Blue,
            image: "v2".into(),
            container: "api-blue".into(),
            id: "abc".into(),
            until: humantime::format_rfc3339_seconds(until).to_string(),
        }
    }

    fn report(status: Option<Status>, servers: &[&str]) -> StatusReport {
        let servers: Vec<SocketAddr> = servers.iter().map(|s| s.parse().unwrap()).collect();
        StatusReport {
            status,
            history: vec!["v2".into(), "v1".into()],
            daemon: Daemon::NotRunning,
            desired: Err(DesiredError::MissingImage {
                path: "/d/desired.toml".into(),
            }),
            upstream_file: "/u.conf".into(),
            upstream_port: servers.first().map(|s| s.port()),
            servers,
            swarm: false,
        }
    }

    /// The screen and `--json` come from one report: what one shows, the other holds.
    #[test]
    fn a_report_shows_a_stalled_pass_and_the_servers_of_a_canary_step() {
        let mut s = Status::new(Phase::Progressing);
        s.step = Some(Step::Canary);
        s.message = Some("a \u{1b}[31mred word".into());
        let r = report(Some(s), &["127.0.0.1:3001", "127.0.0.1:3002"]);
        let text = r.text(SystemTime::now());
        assert!(text.contains("Live      : nothing\n"), "{text}");
        assert!(
            text.contains("(canary) since , stalled: no process works on it\n"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains("Upstream  : /u.conf -> 127.0.0.1:3001, 127.0.0.1:3002 (shared by weight: a canary step)\n"),
            "{text}"
        );
        assert!(text.ends_with("History   : v2, v1\n"), "{text}");
        let json = r.json();
        assert_eq!(json["phase"], "progressing");
        assert_eq!(json["upstream_port"], 3001);
        assert_eq!(json["daemon"], serde_json::json!({ "running": false }));
        assert!(json["desired_file_error"].is_string(), "{json}");
        let none = report(None, &[]);
        assert_eq!(none.json()["phase"], serde_json::Value::Null);
        assert!(none.text(SystemTime::now()).contains(
            "Phase     : no reconcile has run yet\nUpstream  : /u.conf names no server\n"
        ));
    }

    #[test]
    fn the_warm_line_names_the_image_and_the_end_of_its_window() {
        let now = SystemTime::now();
        let line = warm_line(&warm(now + Duration::from_secs(600)), now);
        assert!(line.starts_with("v2 warm until "), "{line}");
        assert!(line.contains("(api-blue)"), "{line}");
        assert!(line.contains("pure nginx switch"), "{line}");
        // HH:MM, then the zone's name; after the date when the window ends tomorrow (a test
        // run in the ten minutes before midnight).
        let mut words = line["v2 warm until ".len()..].split(' ');
        let mut clock = words.next().unwrap();
        if clock.len() == 10 {
            assert_eq!(&clock[4..5], "-", "{line}");
            clock = words.next().unwrap();
        }
        assert_eq!(clock.len(), 5, "{line}");
        assert_eq!(&clock[2..3], ":", "{line}");
    }

    #[test]
    fn a_window_that_is_over_says_the_next_pass_removes_it() {
        let now = SystemTime::now();
        let line = warm_line(&warm(now - Duration::from_secs(5)), now);
        assert!(line.contains("was kept warm until"), "{line}");
        assert!(line.contains("the next pass removes it"), "{line}");
    }

    #[test]
    fn a_window_ending_another_day_shows_the_date() {
        let now = SystemTime::now();
        let line = warm_line(&warm(now + Duration::from_secs(3 * 24 * 3600)), now);
        let date = line["v2 warm until ".len()..].split(' ').next().unwrap();
        assert_eq!(date.len(), 10, "{line}");
        assert_eq!(&date[4..5], "-", "{line}");
    }
}
