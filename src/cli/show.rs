//! `fieldtrack status` and `fieldtrack history`: read-only views of the state files. Text
//! that came from outside (a log tail in the message, a note) is printed through
//! [`printable`]; `--json` is safe as it is, since JSON escapes every control character.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::terminal::printable;
use super::view::{Daemon, View};
use super::CliError;
use crate::config::{Config, RuntimeKind};
use crate::desired::Desired;
use crate::nginx_conf::upstream::{parse_port, parse_servers};
use crate::state::status::{CanaryProgress, Phase, Step, Warm, WindowFigures};

pub fn status(cfg: &Config, json: bool) -> Result<u8, CliError> {
    let view = View::read(cfg)?;
    let history = view.images();
    let daemon = view.daemon.clone();
    let status = view.status;
    let desired = Desired::load(&cfg.desired_file, cfg);
    let upstream_text = std::fs::read_to_string(&cfg.nginx.upstream_file).ok();
    let upstream = upstream_text
        .as_deref()
        .and_then(|t| parse_port(t, &cfg.nginx.upstream_name));
    let swarm = cfg.runtime == RuntimeKind::Swarm;
    let servers = upstream_text
        .as_deref()
        .map(|t| parse_servers(t, &cfg.nginx.upstream_name))
        .unwrap_or_default();
    if json {
        let mut value = serde_json::to_value(&status).unwrap_or(serde_json::Value::Null);
        if value.is_null() {
            value = json!({ "phase": null });
        }
        value["history"] = json!(history);
        value["daemon"] = match &daemon {
            Daemon::Running { pid } => json!({ "running": true, "pid": pid }),
            Daemon::Busy { holder } => json!({ "running": false, "busy": holder }),
            Daemon::NotRunning => json!({ "running": false }),
        };
        value["upstream_port"] = json!(if swarm {
            servers.first().map(|s| s.port())
        } else {
            upstream
        });
        if swarm {
            value["upstream_servers"] =
                json!(servers.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        }
        value["desired_file_error"] = json!(desired.as_ref().err().map(|e| e.to_string()));
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        return Ok(0);
    }
    match &desired {
        Ok(d) => {
            print!("Desired   : {} (generation {}", d.image, d.generation);
            if let Some(by) = &d.by {
                print!(", by {}", printable(by));
            }
            println!("{})", if d.paused { ", paused" } else { "" });
            if let Some(note) = &d.note {
                println!("Note      : {}", printable(note));
            }
        }
        Err(e) => println!("Desired   : unusable: {}", printable(&e.to_string())),
    }
    println!("Daemon    : {}", printable(&daemon_line(&daemon)));
    match status {
        None => println!("Phase     : no reconcile has run yet"),
        Some(s) => {
            match &s.live {
                Some(live) if swarm => println!(
                    "Live      : {} {} (service {}, port {} on each node)",
                    printable(&live.color),
                    printable(&live.image),
                    printable(&live.container),
                    live.port
                ),
                Some(live) => println!(
                    "Live      : {} {} ({}, 127.0.0.1:{})",
                    printable(&live.color),
                    printable(&live.image),
                    printable(&live.container),
                    live.port
                ),
                None => println!("Live      : nothing"),
            }
            let step = s.step.map(|st| format!(" ({st})")).unwrap_or_default();
            // A status left progressing by a process that is gone says so: nothing moves
            // until a daemon (or a command) takes it up again.
            let stalled = if s.phase == Phase::Progressing && daemon == Daemon::NotRunning {
                ", stalled: no process works on it"
            } else {
                ""
            };
            println!(
                "Phase     : {}{step} since {}{stalled}",
                s.phase,
                printable(&s.since)
            );
            if let Some(digest) = &s.digest {
                println!("Digest    : {}", printable(digest));
            }
            if let Some(canary) = s
                .canary
                .as_ref()
                .filter(|_| s.phase == Phase::Progressing && s.step == Some(Step::Canary))
            {
                for line in canary_lines(canary, SystemTime::now()) {
                    println!("{}", printable(&line));
                }
            }
            if let Some(warm) = &s.warm {
                println!(
                    "Previous  : {}",
                    printable(&warm_line(warm, SystemTime::now()))
                );
            }
            if let Some(message) = &s.message {
                println!("Message   : {}", printable(message));
            }
            println!("Updated   : {}", printable(&s.updated_at));
            for color in &s.replicas {
                println!(
                    "Tasks     : {} ({}), as the last pass saw them:",
                    printable(&color.color),
                    printable(&color.service)
                );
                for r in &color.replicas {
                    let message = r
                        .message
                        .as_deref()
                        .map(|m| format!(": {}", printable(m)))
                        .unwrap_or_default();
                    println!(
                        "            {:<16} {:<22} {}{message}",
                        printable(&r.node),
                        printable(r.address.as_deref().unwrap_or("-")),
                        printable(&r.state)
                    );
                }
            }
        }
    }
    if swarm {
        if servers.is_empty() {
            println!(
                "Upstream  : {} names no server",
                cfg.nginx.upstream_file.display()
            );
        } else {
            let list: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
            println!(
                "Upstream  : {} -> {}",
                cfg.nginx.upstream_file.display(),
                list.join(", ")
            );
        }
    } else if servers.len() > 1 {
        // A canary step: both colors, by weight.
        let list: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        println!(
            "Upstream  : {} -> {} (shared by weight: a canary step)",
            cfg.nginx.upstream_file.display(),
            list.join(", ")
        );
    } else {
        match upstream {
            Some(port) => println!(
                "Upstream  : {} -> 127.0.0.1:{port}",
                cfg.nginx.upstream_file.display()
            ),
            None => println!(
                "Upstream  : {} names no server",
                cfg.nginx.upstream_file.display()
            ),
        }
    }
    if history.is_empty() {
        println!("History   : empty");
    } else {
        println!("History   : {}", printable(&history.join(", ")));
    }
    Ok(0)
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
            color: "blue".into(),
            image: "v2".into(),
            container: "api-blue".into(),
            id: "abc".into(),
            until: humantime::format_rfc3339_seconds(until).to_string(),
        }
    }

    #[test]
    fn the_warm_line_names_the_image_and_the_end_of_its_window() {
        let now = SystemTime::now();
        let line = warm_line(&warm(now + Duration::from_secs(600)), now);
        assert!(line.starts_with("v2 warm until "), "{line}");
        assert!(line.contains("(api-blue)"), "{line}");
        assert!(line.contains("pure nginx switch"), "{line}");
        // HH:MM, then the zone's name.
        let clock = line["v2 warm until ".len()..].split(' ').next().unwrap();
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
