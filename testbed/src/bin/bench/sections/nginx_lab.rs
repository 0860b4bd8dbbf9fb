//! e. The nginx lab: a site's nginx in front of two stand-in apps run by the bench itself,
//! so the moment the old one stops can be chosen to the millisecond. How a reload takes
//! effect (e1), a slow request in flight at the reload (e2), and the old app stopped at a
//! chosen moment under load (e3).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fieldtrack_testbed::{util, Site, SiteOptions};

use crate::load::{io_kind, Conn, Load};
use crate::opts::Opts;
use crate::procfs::children;
use crate::report::{Report, Sample, Section};
use crate::stand_in::FakeApp;
use crate::timing::version;
use crate::tools::Tools;
use crate::Result;

/// nginx variants the lab writes into the site's nginx.conf and upstream file.
#[derive(Debug, Clone, Copy, Default)]
struct NginxVariant {
    worker_shutdown_timeout: Option<&'static str>,
    upstream_keepalive: Option<u32>,
}

struct Lab<'a> {
    site: &'a Site,
    nginx: &'a Path,
    variant: NginxVariant,
}

impl Lab<'_> {
    fn prefix(&self) -> PathBuf {
        self.site.dir.join("nginx")
    }

    fn nginx(&self, tail: &[&str]) -> Command {
        let prefix = self.prefix();
        let mut cmd = Command::new(self.nginx);
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .args(tail)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Writes nginx.conf (the bed's, with the variant's lines) and reloads; waits until the
    /// old workers are gone, so the next measurement starts clean.
    fn configure(&mut self, variant: NginxVariant, port: u16) -> Result<()> {
        self.variant = variant;
        let prefix = self.prefix();
        let p = prefix.display();
        let shutdown = variant
            .worker_shutdown_timeout
            .map_or(String::new(), |t| format!("worker_shutdown_timeout {t};\n"));
        let conf = format!(
            r#"# nginx for the bench's lab site (the bed's site config plus the variant's lines)
worker_processes 1;
{shutdown}pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    include {upstream};
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{name};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"#,
            upstream = self.site.upstream_file.display(),
            port = self.site.nginx_port,
            name = self.site.upstream_name,
        );
        fs::write(prefix.join("nginx.conf"), conf).map_err(|e| e.to_string())?;
        self.switch(port)?;
        self.wait_old_workers(&self.workers(), Duration::from_secs(10));
        Ok(())
    }

    /// Points the upstream at `port` and runs `nginx -t` and the reload, as fieldtrack does.
    /// Returns when the reload command started.
    fn switch(&self, port: u16) -> Result<Instant> {
        let keepalive = self
            .variant
            .upstream_keepalive
            .map_or(String::new(), |n| format!("    keepalive {n};\n"));
        fs::write(
            &self.site.upstream_file,
            format!(
                "upstream {} {{\n    server 127.0.0.1:{port};\n{keepalive}}}\n",
                self.site.upstream_name
            ),
        )
        .map_err(|e| e.to_string())?;
        let test = self
            .nginx(&["-t", "-q"])
            .status()
            .map_err(|e| e.to_string())?;
        if !test.success() {
            return Err(format!(
                "nginx -t failed on the lab site ({})",
                self.site.dir.display()
            ));
        }
        let start = Instant::now();
        let reload = self
            .nginx(&["-s", "reload"])
            .status()
            .map_err(|e| e.to_string())?;
        if !reload.success() {
            return Err("nginx -s reload failed on the lab site".into());
        }
        Ok(start)
    }

    /// The master's worker processes now.
    fn workers(&self) -> Vec<i32> {
        let Some(master) = util::read_pid(&self.prefix().join("nginx.pid")) else {
            return Vec::new();
        };
        children(master)
    }

    /// Waits until none of `workers` is alive; how long that took (None: still alive at `limit`).
    fn wait_old_workers(&self, workers: &[i32], limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if workers.iter().all(|&pid| !util::pid_alive(pid)) {
                return Some(start.elapsed());
            }
            thread::sleep(Duration::from_millis(1));
        }
        None
    }
}

pub fn run(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    eprintln!(
        "bench: e. the nginx lab ({} switches per case)",
        opts.lab_switches
    );
    let site = Site::create(tools.bed, SiteOptions::default()).map_err(|e| e.to_string())?;
    let ports = util::free_ports(2).map_err(|e| e.to_string())?;
    let mut apps = [
        FakeApp::new("blue", ports[0]),
        FakeApp::new("green", ports[1]),
    ];
    for app in &mut apps {
        app.start()?;
    }
    let mut lab = Lab {
        site: &site,
        nginx: &tools.bed.nginx,
        variant: NginxVariant::default(),
    };
    lab.configure(NginxVariant::default(), apps[0].port)?;
    let mut live = 0usize;

    // e1. How a reload takes effect, with a client polling back to back on fresh connections.
    let mut reload_cmd = Sample::default();
    let mut first_new = Sample::default();
    let mut last_old = Sample::default();
    let mut workers_gone = Sample::default();
    for _ in 0..opts.lab_switches {
        let next = 1 - live;
        let old_workers = lab.workers();
        let (old_name, new_name) = (apps[live].name, apps[next].name);
        let start = lab.switch(apps[next].port)?;
        let took = start.elapsed();
        let mut first: Option<Duration> = None;
        let mut last: Option<Duration> = None;
        let mut gone: Option<Duration> = None;
        while start.elapsed() < Duration::from_millis(600) {
            match version(site.nginx_addr()).as_deref() {
                Some(v) if v == new_name => {
                    first.get_or_insert(start.elapsed());
                }
                Some(v) if v == old_name => last = Some(start.elapsed()),
                _ => {}
            }
            if gone.is_none() && old_workers.iter().all(|&pid| !util::pid_alive(pid)) {
                gone = Some(start.elapsed());
            }
        }
        if gone.is_none() {
            gone = lab
                .wait_old_workers(&old_workers, Duration::from_secs(10))
                .map(|_| start.elapsed());
        }
        reload_cmd.push(took);
        if let Some(f) = first {
            first_new.push(f);
        }
        last_old.push(last.unwrap_or_default());
        if let Some(g) = gone {
            workers_gone.push(g);
        }
        live = next;
    }
    let mut s = Section::new(
        "e. The nginx lab: what `nginx -s reload` does (stand-in apps run by the bench)",
        &["figure", "median (min-max)"],
    );
    s.row(vec![
        "`nginx -s reload` command returns after".into(),
        reload_cmd.show(),
    ]);
    s.row(vec![
        "first answer from the new upstream, after the reload started".into(),
        first_new.show(),
    ]);
    s.row(vec![
        "last answer from the OLD upstream (old workers still accepting)".into(),
        last_old.show(),
    ]);
    s.row(vec![
        "old worker processes gone (no request in flight)".into(),
        workers_gone.show(),
    ]);

    // e2. A slow request (2 s) in flight at the reload keeps the old worker, and so its
    // connection to the old color, alive; worker_shutdown_timeout cuts it short.
    for variant in [
        NginxVariant::default(),
        NginxVariant {
            worker_shutdown_timeout: Some("1s"),
            ..NginxVariant::default()
        },
    ] {
        lab.configure(variant, apps[live].port)?;
        let next = 1 - live;
        let old_workers = lab.workers();
        let addr = site.nginx_addr();
        let slow = thread::spawn(move || {
            let started = Instant::now();
            let outcome = match util::http_get(addr, "/slow", Duration::from_secs(10)) {
                Ok((code, _)) => format!("HTTP {code}"),
                Err(e) if e.to_string().contains("not an HTTP answer") => {
                    "cut off: the connection closed without an answer".to_string()
                }
                Err(e) => format!("failed: {}", io_kind(&e)),
            };
            (outcome, started.elapsed())
        });
        thread::sleep(Duration::from_millis(200));
        let start = lab.switch(apps[next].port)?;
        let gone = lab
            .wait_old_workers(&old_workers, Duration::from_secs(10))
            .map(|_| start.elapsed());
        let (outcome, took) = slow.join().map_err(|_| "the slow client panicked")?;
        s.row(vec![
            format!(
                "old worker gone with a 2 s request in flight, {}",
                variant
                    .worker_shutdown_timeout
                    .map_or("no worker_shutdown_timeout".into(), |t| format!(
                        "worker_shutdown_timeout {t}"
                    ))
            ),
            format!(
                "{} after the reload; the slow request: {outcome} after {:.2} s",
                gone.map_or("still alive after 10 s".into(), |g| format!(
                    "{:.3} s",
                    g.as_secs_f64()
                )),
                took.as_secs_f64()
            ),
        ]);
        live = next;
    }

    // e3. The old app stopped at a chosen moment after the reload, under load.
    let cases: [(&str, Conn, Option<u32>, Stop); 6] = [
        ("bed's nginx", Conn::Close, None, Stop::AtReloadReturn),
        ("bed's nginx", Conn::Close, None, Stop::AfterOldWorkers),
        ("bed's nginx", Conn::KeepAlive, None, Stop::AtReloadReturn),
        ("bed's nginx", Conn::KeepAlive, None, Stop::AfterOldWorkers),
        (
            "+ upstream keepalive 16",
            Conn::Close,
            Some(16),
            Stop::AfterOldWorkers,
        ),
        (
            "+ upstream keepalive 16",
            Conn::KeepAlive,
            Some(16),
            Stop::AfterOldWorkers,
        ),
    ];
    let mut s3 = Section::new(
        &format!(
            "e3. The old app stopped after each of {} switches under load (stand-in apps)",
            opts.lab_switches
        ),
        &[
            "nginx",
            "clients",
            "old app stops",
            "requests",
            "failed",
            "keep-alive closes retried",
        ],
    );
    for (nginx_name, conn, keepalive, stop) in cases {
        let variant = NginxVariant {
            worker_shutdown_timeout: Some("10s"),
            upstream_keepalive: keepalive,
        };
        lab.configure(variant, apps[live].port)?;
        let load = Load::start(site.nginx_addr(), conn, opts.threads, opts.gap);
        thread::sleep(Duration::from_millis(300));
        for _ in 0..opts.lab_switches {
            let next = 1 - live;
            apps[next].start()?;
            let old_workers = lab.workers();
            lab.switch(apps[next].port)?;
            if stop == Stop::AfterOldWorkers {
                lab.wait_old_workers(&old_workers, Duration::from_secs(15));
            }
            apps[live].stop();
            live = next;
            thread::sleep(Duration::from_millis(300));
        }
        let stats = load.finish();
        s3.row(vec![
            nginx_name.into(),
            conn.name().into(),
            stop.name().into(),
            stats.requests.to_string(),
            stats.failure_text(),
            stats.retried_cell(conn),
        ]);
    }
    s3.notes.push("Stand-in apps stop like the test app on SIGTERM: the port closes and open connections are cut. \"when the reload command returns\" is what a fixed drain of 0 s without waiting for nginx amounts to (fieldtrack before it read nginx.pid_file); \"after the old workers exit\" is what fieldtrack's drain now waits for (src/reconcile/attempt.rs).".into());
    for app in &mut apps {
        app.stop();
    }
    report.sections.push(s);
    report.sections.push(s3);
    Ok(())
}

/// When the lab stops the old app after a switch.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    AtReloadReturn,
    AfterOldWorkers,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::AtReloadReturn => "when the reload command returns",
            Stop::AfterOldWorkers => "after the old workers exit",
        }
    }
}
