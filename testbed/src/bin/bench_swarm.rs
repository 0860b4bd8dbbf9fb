//! `bench-swarm`: the Swarm figures of issue 13 on the real multi-node cluster of the test
//! bed (dockerd nodes in network namespaces, nginx and fieldtrack in the edge namespace; see
//! `testbed/src/swarm.rs`), printed as Markdown. Run by `scripts/bench.sh --swarm`; the
//! numbers mean what `docs/performance.md` ("Swarm") says.
//!
//! ```text
//! bench-swarm [--switches N] [--resync DUR] [--parallelism P,...]
//!             [--only switch,death,scale,canary] [--scale-nodes N] [--scale-replicas R,...]
//!             [--scale-runs N] [--canary-runs N] [--canary-window-secs S]
//!             [--fieldtrack PATH] [--verbose]
//! ```
//!
//! - switch: `--switches` switches alternating v1/v2 (deploy, rollback, deploy, …) under a
//!   load generator, for fieldtrack and for what a Swarm user types instead
//!   (`docker service update --image`, `docker service rollback`, stop-first, on ONE service
//!   publishing in host mode, behind nginx naming the three node addresses). Gives the deploy
//!   and rollback latencies (medians) and the failed requests.
//! - death: a worker partitioned (its link down), then another one's dockerd SIGKILLed,
//!   under load: when the manager calls the node Down, when its address leaves fieldtrack's
//!   upstream (daemon running, `rollout.resync` = `--resync`), and failed requests meanwhile,
//!   beside the same Swarm service behind a static nginx upstream.
//! - scale: the cluster rebuilt with `--scale-nodes` nodes; deploy time, fieldtrack's CPU and
//!   peak RSS with each of `--scale-replicas`, and where the time goes (tasks scheduled,
//!   pulled and started; probes). The cluster is brought back to three nodes after.
//! - canary (only when asked, as section f of the single-engine bench): a bad image (`flaky`,
//!   `err5`) deployed under load with blue/green and its auto-rollback, and through one
//!   canary step of 10%: how many requests reached it and how many of them failed, over
//!   `--canary-window-secs` from the switch, medians of `--canary-runs`.
//!
//! The cluster is shared with the tests: each section holds [`Swarm::faults`] (the exclusive
//! use lock) while it runs, and gives it back between sections. Latencies are wall-clock
//! [`Instant`]s from the command's start; the served version is polled through the site's
//! nginx every 10 ms, each time on a fresh connection. Std and libc only, like the bed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fieldtrack_testbed::{
    in_netns, util, Bed, LoadReport, Node, SiteOptions, Swarm, SwarmSite, DEFAULT_NODES, EDGE_NETNS,
};

/// How often the served version is polled while a command runs.
const POLL: Duration = Duration::from_millis(10);
/// The longest one timed command may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(180);
/// The two versions every switch alternates between.
const VERSIONS: [&str; 2] = ["v1", "v2"];
/// The image of the cold deploy of the scale section: never pulled by a fresh cluster.
const COLD: &str = "v3";
/// How long a node's death or return is waited for before the figure says "not within".
const FAULT_LIMIT: Duration = Duration::from_secs(120);
/// Tries of one switch before the bench gives up.
const SWITCH_TRIES: usize = 3;
/// Replicas on the three-node cluster: one task per node.
const REPLICAS: u64 = 3;

type Result<T> = std::result::Result<T, String>;

fn main() {
    let opts = match Opts::parse(std::env::args().skip(1).collect()) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("bench-swarm: {e}\n{}", Opts::USAGE);
            std::process::exit(2);
        }
    };
    match run(&opts) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("bench-swarm: {e}");
            std::process::exit(1);
        }
    }
}

/// The command line.
struct Opts {
    switches: usize,
    resync: String,
    parallelism: Vec<u32>,
    only: Vec<String>,
    scale_nodes: usize,
    scale_replicas: Vec<u64>,
    scale_runs: usize,
    canary_runs: usize,
    canary_window: Duration,
    fieldtrack: PathBuf,
    verbose: bool,
}

impl Opts {
    const USAGE: &'static str = "usage: bench-swarm [--switches N] [--resync DUR] [--parallelism P,...] [--only switch,death,scale,canary] [--scale-nodes N] [--scale-replicas R,...] [--scale-runs N] [--canary-runs N] [--canary-window-secs S] [--fieldtrack PATH] [--verbose]";

    fn parse(args: Vec<String>) -> Result<Opts> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the testbed crate lives in the workspace")
            .to_path_buf();
        let mut opts = Opts {
            switches: 10,
            resync: "5s".to_string(),
            parallelism: vec![1, 0],
            only: vec!["switch".into(), "death".into(), "scale".into()],
            scale_nodes: 10,
            scale_replicas: vec![1, 3, 10],
            scale_runs: 2,
            canary_runs: 3,
            canary_window: Duration::from_secs(30),
            fieldtrack: workspace.join("target/release/fieldtrack"),
            verbose: false,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            let numbers = |v: String| -> Result<Vec<u64>> {
                v.split(',')
                    .map(|n| {
                        n.trim()
                            .parse::<u64>()
                            .map_err(|_| format!("{arg}: not a number: {n}"))
                    })
                    .collect()
            };
            let one = |v: String| -> Result<u64> {
                match numbers(v)?.as_slice() {
                    [n] => Ok(*n),
                    _ => Err(format!("{arg} takes one number")),
                }
            };
            match arg.as_str() {
                "--switches" => opts.switches = one(value()?)?.max(2) as usize,
                "--resync" => opts.resync = value()?,
                "--parallelism" => {
                    opts.parallelism = numbers(value()?)?.into_iter().map(|p| p as u32).collect()
                }
                "--only" => {
                    opts.only = value()?.split(',').map(|s| s.trim().to_string()).collect();
                    if let Some(bad) = opts
                        .only
                        .iter()
                        .find(|s| !["switch", "death", "scale", "canary"].contains(&s.as_str()))
                    {
                        return Err(format!("--only: no section {bad:?}"));
                    }
                }
                "--scale-nodes" => opts.scale_nodes = one(value()?)?.max(1) as usize,
                "--scale-replicas" => opts.scale_replicas = numbers(value()?)?,
                "--scale-runs" => opts.scale_runs = one(value()?)?.max(1) as usize,
                "--canary-runs" => opts.canary_runs = one(value()?)?.max(1) as usize,
                "--canary-window-secs" => {
                    opts.canary_window = Duration::from_secs(one(value()?)?.max(5))
                }
                "--fieldtrack" => opts.fieldtrack = PathBuf::from(value()?),
                "--verbose" => opts.verbose = true,
                "-h" | "--help" => {
                    println!("{}", Opts::USAGE);
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        opts.fieldtrack = fs::canonicalize(&opts.fieldtrack).map_err(|e| {
            format!(
                "fieldtrack {}: {e} (cargo build --release builds it)",
                opts.fieldtrack.display()
            )
        })?;
        if let Some(r) = opts
            .scale_replicas
            .iter()
            .find(|r| **r as usize > opts.scale_nodes)
        {
            return Err(format!(
                "--scale-replicas {r} exceeds --scale-nodes {} (one task per node)",
                opts.scale_nodes
            ));
        }
        Ok(opts)
    }

    fn wants(&self, section: &str) -> bool {
        self.only.iter().any(|s| s == section)
    }
}

fn run(opts: &Opts) -> Result<String> {
    let started = Instant::now();
    let bed = Bed::up().map_err(|e| format!("the test bed: {e}"))?;
    let swarm = Swarm::up(&bed, DEFAULT_NODES).map_err(|e| format!("the swarm: {e}"))?;
    let mut out = String::new();
    settings(&mut out, opts);
    if opts.wants("switch") {
        progress("switches under load (figures 1-3)");
        let _use = swarm.faults();
        switch_section(&mut out, &swarm, opts)?;
    }
    if opts.wants("death") {
        progress("a node's death (figure 4)");
        let _use = swarm.faults();
        death_section(&mut out, &swarm, opts)?;
    }
    if opts.wants("canary") {
        progress("a bad image through blue/green and through a canary step (figure 6)");
        let _use = swarm.faults();
        canary_section(&mut out, &swarm, opts)?;
    }
    if opts.wants("scale") {
        progress(&format!("scaling on {} nodes (figure 5)", opts.scale_nodes));
        let measured = scale_section(&mut out, &bed, opts);
        progress("bringing the cluster back to three nodes");
        Swarm::up(&bed, DEFAULT_NODES).map_err(|e| format!("back to three nodes: {e}"))?;
        measured?;
    }
    progress(&format!("done in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(out)
}

fn progress(what: &str) {
    eprintln!("\n==> bench-swarm: {what}");
}

fn settings(out: &mut String, opts: &Opts) {
    let _ = writeln!(out, "### Settings\n\n| what | value |\n| --- | --- |");
    let rows = [
        (
            "cluster",
            format!("{DEFAULT_NODES} dockerd nodes in network namespaces (one manager), edge namespace with registry, nginx, fieldtrack"),
        ),
        (
            "fieldtrack site",
            format!("swarm.replicas {REPLICAS}, max_replicas_per_node 1, health.interval 1s, health.timeout 1s, health.attempts 30, container.stop_timeout 2s, rollout.drain 1s; rollout.resync {} for the daemon of figure 4", opts.resync),
        ),
        (
            "Swarm service (the alternative)",
            format!("one service, --replicas {REPLICAS} --replicas-max-per-node 1, --publish mode=host, --update-order stop-first, --rollback-order stop-first, --stop-grace-period 2s, --update-parallelism / --rollback-parallelism as stated (1 is the default; 0 is all at once), other update settings default (monitor 5s, failure action pause); the CLI waits (not --detach)"),
        ),
        (
            "nginx (both)",
            "1 worker; proxy_http_version 1.1; proxy_connect_timeout 2s; proxy_next_upstream error timeout http_502 http_503; server defaults max_fails=1 fail_timeout=10s; no upstream keepalive. fieldtrack writes the upstream file; for the Swarm service it names the three node addresses, once".to_string(),
        ),
        (
            "load generator",
            "EdgeLoad: one thread in the edge namespace, GET /version through nginx one after another, a new connection each, 2 s client timeout".to_string(),
        ),
    ];
    for (what, value) in rows {
        let _ = writeln!(out, "| {what} | {value} |");
    }
    let _ = writeln!(out);
}

// ---------------------------------------------------------------------------------------
// What switches versions: fieldtrack, or the Swarm commands a user would type.

/// Who switches the site between versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    /// `fieldtrack deploy` / `fieldtrack rollback --yes`.
    Fieldtrack,
    /// `docker service update --image` / `docker service rollback` on one service.
    Swarm { parallelism: u32 },
}

impl Driver {
    fn label(&self) -> String {
        match self {
            Driver::Fieldtrack => "fieldtrack".to_string(),
            Driver::Swarm { parallelism } => {
                format!("Swarm stop-first, parallelism {parallelism}")
            }
        }
    }
}

/// A site with its driver, at v1 and serving through its nginx.
struct Rig {
    driver: Driver,
    site: SwarmSite,
    fieldtrack: PathBuf,
}

impl Rig {
    /// A fieldtrack site of `replicas` replicas, deployed at v1.
    fn fieldtrack(swarm: &Swarm, opts: &Opts, replicas: u64) -> Result<Rig> {
        let mut site = new_site(swarm)?;
        site.set("swarm.replicas", &replicas.to_string());
        site.set("rollout.drain", "\"1s\"");
        let rig = Rig {
            driver: Driver::Fieldtrack,
            site,
            fieldtrack: opts.fieldtrack.clone(),
        };
        rig.switch_untimed(&rig.deploy(VERSIONS[0]), VERSIONS[0])?;
        Ok(rig)
    }

    /// One Swarm service `{app}-blue` at v1 publishing on the site's blue port in host mode,
    /// and the site's nginx naming the port on every node, as a Swarm user would set it up.
    fn swarm(swarm: &Swarm, parallelism: u32, opts: &Opts) -> Result<Rig> {
        let site = new_site(swarm)?;
        let p = parallelism.to_string();
        let publish = format!("mode=host,target=8080,published={}", site.blue_port);
        let label = format!("fieldtrack.app={}", site.app);
        run_ok(site.docker().args([
            "service",
            "create",
            "--quiet",
            "--name",
            &site.service("blue"),
            // The label lets the site's teardown remove the service.
            "--label",
            &label,
            "--replicas",
            &REPLICAS.to_string(),
            "--replicas-max-per-node",
            "1",
            "--publish",
            &publish,
            "--update-order",
            "stop-first",
            "--rollback-order",
            "stop-first",
            "--update-parallelism",
            &p,
            "--rollback-parallelism",
            &p,
            "--stop-grace-period",
            "2s",
            &site.image(VERSIONS[0]),
        ]))?;
        let servers: Vec<SocketAddr> = swarm
            .nodes
            .iter()
            .map(|n| n.socket(site.blue_port))
            .collect();
        write_upstream(&site, &servers)?;
        reload_nginx(&site)?;
        let rig = Rig {
            driver: Driver::Swarm { parallelism },
            site,
            fieldtrack: opts.fieldtrack.clone(),
        };
        if !util::wait_until(Duration::from_secs(30), || {
            rig.site.served_version().as_deref() == Some(VERSIONS[0])
        }) {
            return Err(format!(
                "{}: nginx does not serve {} from {servers:?}",
                rig.driver.label(),
                VERSIONS[0]
            ));
        }
        Ok(rig)
    }

    /// `fieldtrack ARGS…` in the edge namespace, aimed at the site's config.
    fn ft(&self, args: &[&str]) -> Command {
        let mut cmd = Swarm::edge_command(&self.fieldtrack);
        cmd.current_dir(&self.site.dir)
            .env_remove("FIELDTRACK_CONFIG")
            .env_remove("FIELDTRACK_TEST_PAUSE_AT")
            .env_remove("FIELDTRACK_LOG")
            .env_remove("DOCKER_HOST")
            .arg("--config")
            .arg(&self.site.config_path)
            .args(args);
        cmd
    }

    /// The command that makes `tag` live.
    fn deploy(&self, tag: &str) -> Command {
        match self.driver {
            Driver::Fieldtrack => self.ft(&["deploy", tag]),
            Driver::Swarm { .. } => {
                let mut cmd = self.site.docker();
                cmd.args([
                    "service",
                    "update",
                    "--image",
                    &self.site.image(tag),
                    &self.site.service("blue"),
                ]);
                cmd
            }
        }
    }

    /// The command that goes back to the previous version.
    fn rollback(&self) -> Command {
        match self.driver {
            Driver::Fieldtrack => self.ft(&["rollback", "--yes"]),
            Driver::Swarm { .. } => {
                let mut cmd = self.site.docker();
                cmd.args(["service", "rollback", &self.site.service("blue")]);
                cmd
            }
        }
    }

    fn switch_untimed(&self, cmd: &Command, tag: &str) -> Result<()> {
        let outcome = timed(rebuild(cmd), self.site.nginx_addr(), tag)?;
        outcome.expect_success(&format!("{} to {tag}", self.driver.label()))
    }
}

/// A new site on `swarm`, its services and nginx removed when dropped.
fn new_site(swarm: &Swarm) -> Result<SwarmSite> {
    SwarmSite::create(swarm, SiteOptions::default()).map_err(|e| format!("a swarm site: {e}"))
}

/// A copy of a command (program, arguments, environment, folder), to run it again.
fn rebuild(cmd: &Command) -> Command {
    let mut copy = Command::new(cmd.get_program());
    copy.args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => copy.env(key, v),
            None => copy.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        copy.current_dir(dir);
    }
    copy
}

fn run_ok(cmd: &mut Command) -> Result<String> {
    util::run(cmd).map_err(|e| e.to_string())
}

/// Writes the site's upstream block naming `servers` (what a Swarm user writes by hand).
fn write_upstream(site: &SwarmSite, servers: &[SocketAddr]) -> Result<()> {
    let mut text = format!(
        "# written by bench-swarm: every node, as a Swarm user would\nupstream {} {{\n",
        site.upstream_name
    );
    for s in servers {
        let _ = writeln!(text, "    server {s};");
    }
    text.push_str("}\n");
    fs::write(&site.upstream_file, text)
        .map_err(|e| format!("cannot write {}: {e}", site.upstream_file.display()))
}

fn reload_nginx(site: &SwarmSite) -> Result<()> {
    let prefix = site.dir.join("nginx");
    run_ok(
        Swarm::edge_command(&site.swarm.bed.nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .args(["-s", "reload"]),
    )
    .map(drop)
}

// ---------------------------------------------------------------------------------------
// One timed command

/// A command run to its end while the served version was polled through nginx.
#[derive(Debug)]
struct Outcome {
    /// The first poll that got the target version.
    first: Option<Duration>,
    /// From here on every poll got the target (the first of the last run of target answers).
    settled: Option<Duration>,
    /// The command's exit.
    exit: Duration,
    code: Option<i32>,
    /// User + system CPU of the command and the children it waited for (`wait4`).
    cpu: Duration,
    /// VmHWM of the command itself, last sampled while it ran.
    hwm_kib: Option<u64>,
    /// Its stderr lines, each with when it arrived.
    lines: Vec<(Duration, String)>,
    /// When it started, by the wall clock (to compare with the manager's timestamps).
    started_at: SystemTime,
}

impl Outcome {
    fn expect_success(&self, what: &str) -> Result<()> {
        if self.code != Some(0) {
            return Err(format!(
                "{what} exited {:?}; its stderr:\n{}",
                self.code,
                self.stderr_tail(15)
            ));
        }
        if self.settled.is_none() {
            return Err(format!(
                "{what}: nginx never served the target version; stderr:\n{}",
                self.stderr_tail(15)
            ));
        }
        Ok(())
    }

    fn stderr_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.lines.iter().map(|(_, l)| l.as_str()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// When a stderr line containing `needle` first arrived.
    fn line_at(&self, needle: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }

    /// The probe count of fieldtrack's "health passed (probe N)" line.
    fn probes(&self) -> Option<u32> {
        let line = &self
            .lines
            .iter()
            .find(|(_, l)| l.contains("health passed"))?
            .1;
        let rest = line.split("probe ").nth(1)?;
        rest.trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .ok()
    }
}

/// Runs `cmd` (stdout discarded, stderr kept line by line) and polls `/version` through
/// `nginx` every [`POLL`] until the command has exited and the last poll got `target` (or 5 s
/// after the exit without it). The polls come from a thread inside the edge namespace.
fn timed(mut cmd: Command, nginx: SocketAddr, target: &str) -> Result<Outcome> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let edge = PathBuf::from(format!("/run/netns/{EDGE_NETNS}"));
    in_netns(&edge, move || -> Result<Outcome> {
        let started_at = SystemTime::now();
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
        let pid = child.id() as i32;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let stderr = child.stderr.take().expect("stderr is piped");
            let lines = Arc::clone(&lines);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                    lines
                        .lock()
                        .expect("one writer")
                        .push((start.elapsed(), line));
                }
            })
        };
        let mut first = None;
        let mut settled = None;
        let mut hwm_kib = None;
        let mut exited: Option<(Duration, Option<i32>, libc::rusage)> = None;
        loop {
            let hit = matches!(
                util::http_get(nginx, "/version", Duration::from_secs(1)),
                Ok((200, ref body)) if body.trim() == target
            );
            let now = start.elapsed();
            if hit {
                first.get_or_insert(now);
                settled.get_or_insert(now);
            } else {
                settled = None;
            }
            if exited.is_none() {
                if let Some(kib) = vm_hwm(pid) {
                    hwm_kib = Some(kib);
                }
                exited = reap(pid).map(|(code, usage)| (start.elapsed(), code, usage));
            }
            match exited {
                Some(_) if hit => break,
                Some((exit, ..)) if now > exit + Duration::from_secs(5) => break,
                None if now > COMMAND_LIMIT => {
                    let _ = child.kill();
                    let _ = reap_blocking(pid);
                    return Err(format!(
                        "{:?} ran longer than {COMMAND_LIMIT:?}",
                        cmd.get_program()
                    ));
                }
                _ => {}
            }
            thread::sleep(POLL);
        }
        let _ = reader.join();
        let (exit, code, usage) = exited.expect("the loop ends after the exit");
        let lines = std::mem::take(&mut *lines.lock().expect("the reader ended"));
        Ok(Outcome {
            first,
            settled,
            exit,
            code,
            cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
            hwm_kib,
            lines,
            started_at,
        })
    })
    .map_err(|e| format!("cannot enter the edge namespace: {e}"))?
}

/// Reaps `pid` if it has exited: its exit code (None when killed by a signal) and usage.
fn reap(pid: i32) -> Option<(Option<i32>, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
    (r == pid).then(|| {
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        (code, usage)
    })
}

fn reap_blocking(pid: i32) -> Option<(Option<i32>, libc::rusage)> {
    for _ in 0..500 {
        if let Some(r) = reap(pid) {
            return Some(r);
        }
        thread::sleep(Duration::from_millis(10));
    }
    None
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
}

/// VmHWM (peak RSS) of a running process, in KiB.
fn vm_hwm(pid: i32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------
// Figures 1-3: switches under load

/// One driver's switches: deploys to v2 and rollbacks to v1, alternating, under load.
struct Switches {
    driver: Driver,
    deploys: Vec<Outcome>,
    rollbacks: Vec<Outcome>,
    load: LoadReport,
    wall: Duration,
    /// Switches that failed and were tried again: why, in words.
    retried: Vec<String>,
    /// What the site's nginx logged as errors meanwhile, by kind.
    nginx_errors: String,
}

fn switch_section(out: &mut String, swarm: &Swarm, opts: &Opts) -> Result<()> {
    let mut drivers = vec![Driver::Fieldtrack];
    drivers.extend(
        opts.parallelism
            .iter()
            .map(|&parallelism| Driver::Swarm { parallelism }),
    );
    let mut results = Vec::new();
    for driver in drivers {
        eprintln!(
            "bench-swarm: {}: setting up at {}",
            driver.label(),
            VERSIONS[0]
        );
        let rig = match driver {
            Driver::Fieldtrack => Rig::fieldtrack(swarm, opts, REPLICAS)?,
            Driver::Swarm { parallelism } => Rig::swarm(swarm, parallelism, opts)?,
        };
        results.push(switches(&rig, opts)?);
    }

    let _ = writeln!(
        out,
        "### Figures 1-3. {} switches alternating {} / {} on {} nodes, {REPLICAS} replicas, under load\n",
        opts.switches, VERSIONS[0], VERSIONS[1], swarm.nodes.len()
    );
    let _ = writeln!(
        out,
        "Each time is the median of the switches of that kind (min-max), from the command's start. \
         Deploy = `fieldtrack deploy {v2}` / `docker service update --image …:{v2}`; \
         rollback = `fieldtrack rollback --yes` / `docker service rollback`.\n",
        v2 = VERSIONS[1]
    );
    let mut header = "| figure |".to_string();
    let mut rule = "| --- |".to_string();
    for r in &results {
        let _ = write!(header, " {} |", r.driver.label());
        rule.push_str(" --- |");
    }
    let _ = writeln!(out, "{header}\n{rule}");
    let rows: [(&str, Cell); 11] = [
        ("1. deploy: nginx first serves the new version", &|r| {
            stat(r.deploys.iter().map(|o| o.first))
        }),
        ("1. deploy: nginx serves only the new version", &|r| {
            stat(r.deploys.iter().map(|o| o.settled))
        }),
        ("1. deploy: the command exits", &|r| {
            stat(r.deploys.iter().map(|o| Some(o.exit)))
        }),
        (
            "2. rollback: nginx first serves the previous version",
            &|r| stat(r.rollbacks.iter().map(|o| o.first)),
        ),
        (
            "2. rollback: nginx serves only the previous version",
            &|r| stat(r.rollbacks.iter().map(|o| o.settled)),
        ),
        ("2. rollback: the command exits", &|r| {
            stat(r.rollbacks.iter().map(|o| Some(o.exit)))
        }),
        ("3. requests ok / **failed** across the switches", &|r| {
            format!("{} / **{}**", r.load.ok, r.load.failed)
        }),
        ("3. the failures", &|r| failures(&r.load)),
        ("3. nginx error.log meanwhile", &|r| r.nginx_errors.clone()),
        ("3. wall time of the switches", &|r| secs(r.wall)),
        ("switches that failed (tried again after 2 s)", &|r| {
            r.retried.len().to_string()
        }),
    ];
    for (figure, cell) in rows {
        let mut line = format!("| {figure} |");
        for r in &results {
            let _ = write!(line, " {} |", cell(r));
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(out);
    for r in &results {
        for why in &r.retried {
            let _ = writeln!(out, "- failed switch, {why}");
        }
    }
    if results.iter().any(|r| !r.retried.is_empty()) {
        let _ = writeln!(out);
    }
    Ok(())
}

/// Runs the command `cmd` makes until nginx serves `target`. A switch that fails is a figure
/// too: why is added to `retried`, and it is tried again after a pause (up to
/// [`SWITCH_TRIES`] times), so that the next switches still start from the expected version.
fn switch(
    rig: &Rig,
    cmd: impl Fn() -> Command,
    target: &str,
    what: &str,
    retried: &mut Vec<String>,
) -> Result<Outcome> {
    let mut tries = 0;
    loop {
        tries += 1;
        let result = timed(cmd(), rig.site.nginx_addr(), target)
            .and_then(|o| o.expect_success(what).map(|()| o));
        match result {
            Ok(o) => return Ok(o),
            Err(e) if tries < SWITCH_TRIES => {
                eprintln!("bench-swarm: {e}\nbench-swarm: trying again in 2 s");
                retried.push(format!("{what}: {}", reason(&e)));
                thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One cell of the switches table: a figure of one driver's switches.
type Cell<'a> = &'a dyn Fn(&Switches) -> String;

fn switches(rig: &Rig, opts: &Opts) -> Result<Switches> {
    let label = rig.driver.label();
    let load = rig
        .site
        .load("/version")
        .map_err(|e| format!("the load generator: {e}"))?;
    let logged = error_log_len(&rig.site);
    let started = Instant::now();
    let mut deploys = Vec::new();
    let mut rollbacks = Vec::new();
    let mut failed = None;
    let mut retried = Vec::new();
    for i in 0..opts.switches {
        let (target, what) = if i % 2 == 0 {
            (VERSIONS[1], "deploy")
        } else {
            (VERSIONS[0], "rollback")
        };
        let what = format!("{label}, switch {} ({what} to {target})", i + 1);
        let outcome = match switch(
            rig,
            || {
                if i % 2 == 0 {
                    rig.deploy(target)
                } else {
                    rig.rollback()
                }
            },
            target,
            &what,
            &mut retried,
        ) {
            Ok(o) => o,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        eprintln!(
            "bench-swarm: {label}: switch {} to {target}: first {}, only {}, exit {}",
            i + 1,
            opt_secs(outcome.first),
            opt_secs(outcome.settled),
            secs(outcome.exit)
        );
        if opts.verbose {
            for (t, line) in &outcome.lines {
                eprintln!("    {:>7.3} {line}", t.as_secs_f64());
            }
        }
        if i % 2 == 0 {
            deploys.push(outcome);
        } else {
            rollbacks.push(outcome);
        }
    }
    // Requests in flight at the last switch's end are counted too.
    thread::sleep(Duration::from_secs(1));
    let wall = started.elapsed();
    let load = load.stop();
    if let Some(e) = failed {
        return Err(e);
    }
    eprintln!(
        "bench-swarm: {label}: load {} ok, {} failed: {}",
        load.ok,
        load.failed,
        failures(&load)
    );
    Ok(Switches {
        driver: rig.driver,
        deploys,
        rollbacks,
        load,
        wall,
        retried,
        nginx_errors: nginx_errors(&rig.site, logged),
    })
}

/// The length of the site's nginx error log now, to count only what comes after.
fn error_log_len(site: &SwarmSite) -> usize {
    site.read(&error_log(site)).len()
}

fn error_log(site: &SwarmSite) -> PathBuf {
    site.dir.join("nginx/logs/error.log")
}

/// The site's nginx error log from byte `from` on, counted by kind of upstream error.
fn nginx_errors(site: &SwarmSite, from: usize) -> String {
    let log = site.read(&error_log(site));
    let log = log.get(from..).unwrap_or_default();
    let kinds = [
        "no live upstreams",
        "Connection refused",
        "timed out",
        "prematurely closed",
        "reset by peer",
        "No route to host",
    ];
    // (kind, the upstream's address) → count.
    let mut counts: BTreeMap<(usize, String), usize> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("[error]")) {
        let kind = kinds
            .iter()
            .position(|k| line.contains(k))
            .unwrap_or(kinds.len());
        let upstream = line
            .split("upstream: \"http://")
            .nth(1)
            .and_then(|rest| rest.split([':', '/']).next())
            .unwrap_or_default()
            .to_string();
        *counts.entry((kind, upstream)).or_default() += 1;
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|((kind, upstream), n)| {
            let what = kinds.get(*kind).copied().unwrap_or("other");
            if upstream.is_empty() {
                format!("{n} {what}")
            } else {
                format!("{n} {what} ({upstream})")
            }
        })
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// The line of a failed switch's error that says why (fieldtrack's own last line, or the
/// task's error), for the table.
fn reason(error: &str) -> String {
    let line = error
        .lines()
        .rev()
        .find(|l| l.contains("failed") || l.contains("error"))
        .or_else(|| error.lines().next())
        .unwrap_or_default();
    line.replace('|', "/").chars().take(300).collect()
}

/// "1.234 s (1.100-1.500)": the median and range of a figure over runs (None: the run never
/// got there).
fn stat(figures: impl IntoIterator<Item = Option<Duration>>) -> String {
    let figures: Vec<Option<Duration>> = figures.into_iter().collect();
    let mut values: Vec<f64> = figures.iter().flatten().map(|d| d.as_secs_f64()).collect();
    if values.is_empty() {
        return "-".to_string();
    }
    let missing = figures.len() - values.len();
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let mut text = format!(
        "{:.3} s ({:.3}-{:.3})",
        median_of(values.clone()),
        values[0],
        values[n - 1]
    );
    if missing > 0 {
        let _ = write!(text, ", never in {missing} runs");
    }
    text
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or("never".to_string(), secs)
}

/// The kinds of failure a load generator saw, from its first failures.
fn failures(load: &LoadReport) -> String {
    if load.failed == 0 {
        return "none".to_string();
    }
    let kinds: BTreeSet<String> = load
        .first_failures
        .iter()
        .map(|f| {
            // "502 <html>…" → "HTTP 502"; "Connection refused (os error 111)" → its words.
            match f.split_once(' ') {
                Some((code, _)) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => {
                    format!("HTTP {code}")
                }
                // EAGAIN on a socket with a read timeout: no answer within the 2 s.
                _ if f.contains("Resource temporarily unavailable") || f.contains("timed out") => {
                    "no answer within the client's 2 s".to_string()
                }
                _ => {
                    let first = f.lines().next().unwrap_or_default().replace('|', "/");
                    first
                        .split(" (os error")
                        .next()
                        .unwrap_or(&first)
                        .to_string()
                }
            }
        })
        .collect();
    let listed: Vec<String> = kinds.into_iter().collect();
    format!(
        "{} (of the first {})",
        listed.join("; "),
        load.first_failures.len()
    )
}

// ---------------------------------------------------------------------------------------
// Figure 4: a node's death

/// How a node dies.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Its link taken down inside its namespace.
    Partition,
    /// Its dockerd SIGKILLed (its containers keep running).
    KillEngine,
}

impl Fault {
    fn label(&self) -> &'static str {
        match self {
            Fault::Partition => "partition (link down)",
            Fault::KillEngine => "dockerd SIGKILLed",
        }
    }

    fn inflict(&self, swarm: &Swarm, node: &Node) -> Result<()> {
        match self {
            Fault::Partition => swarm.partition(node),
            Fault::KillEngine => swarm.kill_engine(node),
        }
        .map_err(|e| e.to_string())
    }

    fn repair(&self, swarm: &Swarm, node: &Node) -> Result<()> {
        match self {
            Fault::Partition => swarm.heal(node),
            Fault::KillEngine => swarm.restart_engine(node),
        }
        .map_err(|e| e.to_string())
    }
}

/// What one node death showed.
struct Death {
    fault: Fault,
    node: String,
    down: Option<Duration>,
    leaves: Option<Duration>,
    window: Duration,
    fieldtrack: LoadReport,
    static_upstream: LoadReport,
    /// What each nginx logged as errors in the window, by kind.
    fieldtrack_errors: String,
    static_errors: String,
    back: Option<Duration>,
}

fn death_section(out: &mut String, swarm: &Swarm, opts: &Opts) -> Result<()> {
    eprintln!("bench-swarm: setting up a fieldtrack site with a daemon, and the Swarm service");
    let mut ft = Rig::fieldtrack(swarm, opts, REPLICAS)?;
    ft.site
        .set("rollout.resync", &format!("\"{}\"", opts.resync));
    let plain = Rig::swarm(swarm, 1, opts)?;
    let log = ft.site.dir.join("daemon.log");
    let log_file = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut daemon = ft
        .ft(&["daemon"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start the daemon: {e}"))?;
    let all: BTreeSet<Ipv4Addr> = swarm.nodes.iter().map(|n| n.addr).collect();
    let mut deaths = Vec::new();
    let mut result = Ok(());
    // A worker each time: the manager must keep answering.
    for (fault, node) in [Fault::Partition, Fault::KillEngine]
        .into_iter()
        .zip(swarm.workers().iter().cycle())
    {
        // The daemon's first pass, or the previous node's return, must be over.
        if !util::wait_until(FAULT_LIMIT, || upstream_addrs(&ft.site) == all) {
            result = Err(format!(
                "before the {}: fieldtrack's upstream does not name every node: {}",
                fault.label(),
                ft.site.read(&ft.site.upstream_file)
            ));
            break;
        }
        match death(swarm, &ft, &plain, fault, node) {
            Ok(d) => deaths.push(d),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    if opts.verbose {
        eprintln!("{}", util::tail_file(&log, 60));
    }
    result?;

    let _ = writeln!(
        out,
        "### Figure 4. A worker's death under load: fieldtrack's daemon (rollout.resync {}) and a static upstream\n",
        opts.resync
    );
    let _ = writeln!(
        out,
        "Times from the fault. Requests counted from the fault until 3 s after the address left fieldtrack's upstream (the same window for both, one load generator each), \
         through each site's nginx: fieldtrack's (upstream file kept by the daemon) and the Swarm service's (the three node addresses, written once).\n",
    );
    let _ = writeln!(
        out,
        "| fault | node | manager marks it Down | address leaves fieldtrack's upstream | window | fieldtrack: ok / **failed** | fieldtrack's nginx error.log | static upstream: ok / **failed** | static upstream: the failures | static upstream's nginx error.log | back in fieldtrack's upstream after repair |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for d in &deaths {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} / **{}** | {} | {} / **{}** | {} | {} | {} |",
            d.fault.label(),
            d.node,
            opt_secs(d.down),
            opt_secs(d.leaves),
            secs(d.window),
            d.fieldtrack.ok,
            d.fieldtrack.failed,
            d.fieldtrack_errors,
            d.static_upstream.ok,
            d.static_upstream.failed,
            failures(&d.static_upstream),
            d.static_errors,
            opt_secs(d.back),
        );
    }
    let _ = writeln!(out);
    Ok(())
}

fn death(swarm: &Swarm, ft: &Rig, plain: &Rig, fault: Fault, node: &Node) -> Result<Death> {
    eprintln!("bench-swarm: {} of {}", fault.label(), node.name);
    let logged = (error_log_len(&ft.site), error_log_len(&plain.site));
    let load_ft = ft.site.load("/version").map_err(|e| e.to_string())?;
    let load_plain = plain.site.load("/version").map_err(|e| e.to_string())?;
    thread::sleep(Duration::from_millis(500));

    // The manager's view, polled on a thread of its own (each look is a docker command).
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let watcher = {
        let (swarm, node, stop) = (swarm.clone(), node.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && start.elapsed() < FAULT_LIMIT {
                if swarm.node_state(&node).is_some_and(|(s, _)| s == "down") {
                    return Some(start.elapsed());
                }
                thread::sleep(Duration::from_millis(200));
            }
            None
        })
    };
    fault.inflict(swarm, node)?;
    let mut leaves = None;
    while start.elapsed() < FAULT_LIMIT {
        if !upstream_addrs(&ft.site).contains(&node.addr) {
            leaves = Some(start.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    thread::sleep(Duration::from_secs(3));
    let window = start.elapsed();
    let fieldtrack = load_ft.stop();
    let static_upstream = load_plain.stop();
    let fieldtrack_errors = nginx_errors(&ft.site, logged.0);
    let static_errors = nginx_errors(&plain.site, logged.1);
    stop.store(true, Ordering::Relaxed);
    let down = watcher.join().unwrap_or(None);
    eprintln!(
        "bench-swarm: down {}, leaves {}; fieldtrack {} ok {} failed; static {} ok {} failed: {}",
        opt_secs(down),
        opt_secs(leaves),
        fieldtrack.ok,
        fieldtrack.failed,
        static_upstream.ok,
        static_upstream.failed,
        failures(&static_upstream)
    );

    fault.repair(swarm, node)?;
    let repaired = Instant::now();
    let back = util::wait_until(FAULT_LIMIT, || {
        upstream_addrs(&ft.site).contains(&node.addr)
    })
    .then(|| repaired.elapsed());
    swarm
        .restore()
        .map_err(|e| format!("cannot heal the cluster: {e}"))?;
    Ok(Death {
        fault,
        node: node.name.clone(),
        down,
        leaves,
        window,
        fieldtrack,
        static_upstream,
        fieldtrack_errors,
        static_errors,
        back,
    })
}

/// The node addresses in a site's upstream file.
fn upstream_addrs(site: &SwarmSite) -> BTreeSet<Ipv4Addr> {
    site.read(&site.upstream_file)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|rest| rest.split([';', ' ', ':']).next()?.parse().ok())
        .collect()
}

/// The port the upstream file's servers name (which tells the live color).
fn upstream_port(site: &SwarmSite) -> Option<u16> {
    site.read(&site.upstream_file)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .find_map(|rest| {
            let addr = rest.split([';', ' ']).next()?;
            addr.parse::<SocketAddr>().ok().map(|a| a.port())
        })
}

// ---------------------------------------------------------------------------------------
// Figure 5: scaling

/// One scaling row: a deployment with `replicas` on the big cluster.
struct Scaled {
    what: String,
    runs: Vec<Outcome>,
    /// Per run: when the last task of the new color was Running, from the command's start.
    running: Vec<Option<Duration>>,
    /// Deployments that failed and were tried again: why.
    retried: Vec<String>,
}

fn scale_section(out: &mut String, bed: &Bed, opts: &Opts) -> Result<()> {
    let rebuild = Instant::now();
    // Swarm::up takes the exclusive use lock itself while it rebuilds (tests of other
    // processes are waited for); it is taken again at once for the measurements.
    let big = Swarm::up(bed, opts.scale_nodes).map_err(|e| format!("the big cluster: {e}"))?;
    let rebuilt = rebuild.elapsed();
    let _use = big.faults();
    if big.nodes.len() != opts.scale_nodes {
        return Err(format!(
            "the cluster has {} nodes, {} wanted",
            big.nodes.len(),
            opts.scale_nodes
        ));
    }

    // Every node starts without images; then the two warm versions are pulled everywhere, so
    // that the warm rows measure scheduling, starting and probing only.
    let prepull = Instant::now();
    for_each_node(&big, |node| {
        let _ = util::run(node.docker().args(["image", "prune", "-a", "-f"]));
        for tag in VERSIONS {
            util::run(node.docker().args(["pull", "-q", &big.image(tag)]))
                .map_err(|e| format!("{}: {e}", node.name))?;
        }
        Ok(())
    })?;
    let prepulled = prepull.elapsed();

    let mut rows = Vec::new();
    let mut biggest = None;
    for &replicas in &opts.scale_replicas {
        eprintln!(
            "bench-swarm: {replicas} replicas on {} nodes",
            big.nodes.len()
        );
        let rig = Rig::fieldtrack(&big, opts, replicas)?;
        let mut row = Scaled {
            what: format!("{replicas} (warm: image on every node)"),
            runs: Vec::new(),
            running: Vec::new(),
            retried: Vec::new(),
        };
        for run in 0..opts.scale_runs {
            let tag = VERSIONS[(run + 1) % 2];
            scaled_deploy(&rig, tag, &mut row)?;
        }
        rows.push(row);
        if Some(replicas) == opts.scale_replicas.iter().max().copied() {
            biggest = Some(rig);
        }
    }
    if let Some(rig) = &biggest {
        let replicas = opts.scale_replicas.iter().max().copied().unwrap_or(1);
        eprintln!("bench-swarm: {replicas} replicas, cold ({COLD} on no node)");
        let mut row = Scaled {
            what: format!("{replicas} (cold: {COLD} pulled by each node)"),
            runs: Vec::new(),
            running: Vec::new(),
            retried: Vec::new(),
        };
        scaled_deploy(rig, COLD, &mut row)?;
        rows.push(row);
    }
    drop(biggest);

    let _ = writeln!(
        out,
        "### Figure 5. Scaling: `fieldtrack deploy` with N replicas on {} nodes (one task per node)\n",
        big.nodes.len()
    );
    let _ = writeln!(
        out,
        "The cluster was rebuilt with {} nodes in {:.0} s; pulling {} and {} on every node took {:.1} s. \
         Times from the command's start, median of {} runs (min-max) for the warm rows, one run for the cold one. \
         \"tasks Running\": the manager's timestamp of the last new task's Running state; \
         \"health passed\": fieldtrack's own probes of every address answered. \
         CPU: user + system of fieldtrack and the nginx commands it ran (wait4's rusage); VmHWM: fieldtrack's own peak RSS (/proc, sampled every 10 ms; wait4's ru_maxrss is not used: Linux carries the peak of the process from before its exec, here the bench's own).\n",
        big.nodes.len(),
        rebuilt.as_secs_f64(),
        VERSIONS[0],
        VERSIONS[1],
        prepulled.as_secs_f64(),
        opts.scale_runs
    );
    let _ = writeln!(
        out,
        "| replicas | nginx serves the new version | tasks Running | health passed (probes) | command exits | CPU | VmHWM | failed tries |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for row in &rows {
        let probes: Vec<String> = row
            .runs
            .iter()
            .map(|o| o.probes().map_or("?".into(), |p| p.to_string()))
            .collect();
        let cpu = median_of(row.runs.iter().map(|o| o.cpu.as_secs_f64()).collect());
        let hwm = row.runs.iter().filter_map(|o| o.hwm_kib).max();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} ({}) | {} | {:.3} s | {} | {} |",
            row.what,
            stat(row.runs.iter().map(|o| o.settled)),
            stat(row.running.iter().copied()),
            stat(row.runs.iter().map(|o| o.line_at("health passed"))),
            probes.join(", "),
            stat(row.runs.iter().map(|o| Some(o.exit))),
            cpu,
            hwm.map_or("-".into(), mib),
            row.retried.len(),
        );
    }
    let _ = writeln!(out);
    for why in rows.iter().flat_map(|r| &r.retried) {
        let _ = writeln!(out, "- failed deployment, {why}");
    }
    if rows.iter().any(|r| !r.retried.is_empty()) {
        let _ = writeln!(out);
    }
    Ok(())
}

/// A timed `fieldtrack deploy TAG`, with when its tasks ran added to `row`.
fn scaled_deploy(rig: &Rig, tag: &str, row: &mut Scaled) -> Result<()> {
    let what = format!("{} replicas, deploy {tag}", rig_replicas(&row.what));
    let outcome = switch(rig, || rig.deploy(tag), tag, &what, &mut row.retried)?;
    let running = last_task_running(&rig.site, outcome.started_at);
    eprintln!(
        "bench-swarm: {}: deploy {tag}: tasks running {}, served {}, exit {}, cpu {:.3} s",
        row.what,
        opt_secs(running),
        opt_secs(outcome.settled),
        secs(outcome.exit),
        outcome.cpu.as_secs_f64()
    );
    row.runs.push(outcome);
    row.running.push(running);
    Ok(())
}

/// The replica count a scaling row's label starts with.
fn rig_replicas(what: &str) -> &str {
    what.split(' ').next().unwrap_or(what)
}

/// When the last task of the live color's service became Running, after `since` (the
/// manager's timestamps; it runs on this machine's clock).
fn last_task_running(site: &SwarmSite, since: SystemTime) -> Option<Duration> {
    let color = match upstream_port(site)? {
        p if p == site.blue_port => "blue",
        _ => "green",
    };
    let service = site.service(color);
    let ids = util::run(site.docker().args([
        "service",
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        &service,
    ]))
    .ok()?;
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return None;
    }
    let out = util::run(
        site.docker()
            .args([
                "inspect",
                "--type",
                "task",
                "--format",
                "{{.Status.State}} {{.Status.Timestamp.UnixNano}}",
            ])
            .args(&ids),
    )
    .ok()?;
    let since = since.duration_since(UNIX_EPOCH).ok()?;
    out.lines()
        .filter_map(|l| {
            let (state, nanos) = l.split_once(' ')?;
            (state == "running").then_some(())?;
            let at = Duration::from_nanos(nanos.trim().parse().ok()?);
            at.checked_sub(since)
        })
        .max()
}

/// Runs `f` for every node at once, each on a thread of its own.
fn for_each_node(swarm: &Swarm, f: impl Fn(&Node) -> Result<()> + Sync) -> Result<()> {
    thread::scope(|scope| {
        let handles: Vec<_> = swarm
            .nodes
            .iter()
            .map(|node| scope.spawn(|| f(node)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a node's thread panicked".into()))
            })
            .collect::<Result<Vec<()>>>()
            .map(drop)
    })
}

fn median_of(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------
// Figure 6: the canary (section f of the single-engine bench, on the cluster)

/// The bad images, as in section f. `flaky`: `/health` answers 500 from 3 s after its
/// start, `/version` keeps answering 200 (probes catch it, real requests do not). `err5`:
/// `/health` always 200, every 5th other request 500 (only real requests catch it).
const CANARY_BAD: [&str; 2] = ["flaky", "err5"];
/// What every run starts from and goes back to.
const CANARY_STABLE: &str = "v1";
/// The canary's one step and its bounds, and both strategies' drain: section f's.
const CANARY_WEIGHT: u32 = 10;
const CANARY_PAUSE: &str = "20s";
const CANARY_MIN_REQUESTS: u32 = 50;
const CANARY_MAX_ERROR_RATE: &str = "0.01";
const CANARY_DRAIN: &str = "10s";
/// Section c's load, as section f has it: 4 threads, a new connection per request, 2 ms
/// between a thread's requests.
const CANARY_THREADS: usize = 4;
const CANARY_GAP: Duration = Duration::from_millis(2);

/// How a bad image is deployed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// Straight to 100% after the health gate, rollout.auto_rollback watching the drain.
    BlueGreen,
    /// One canary step at [`CANARY_WEIGHT`]%, then the full switch.
    Canary,
}

impl Strategy {
    fn label(self) -> String {
        match self {
            Strategy::BlueGreen => format!("A: blue/green, auto-rollback, drain {CANARY_DRAIN}"),
            Strategy::Canary => format!("B: canary, 1 step {CANARY_WEIGHT}%"),
        }
    }
}

/// One deployment of a bad image under load, counted over the window from the switch (the
/// first change of the upstream file).
#[derive(Debug, Clone)]
struct BadRun {
    /// Requests sent in the window that an app answered.
    requests: u64,
    /// Of those, answered by the bad image.
    reached: u64,
    /// Of those, not 200.
    reached_failed: u64,
    /// Requests of the whole load run that no app answered (connection errors, nginx's own
    /// 5xx).
    other_failed: u64,
    /// From the switch to the last request the bad image answered; None when it still
    /// answered in the window's last second (it stays live).
    back_after: Option<Duration>,
    /// From the switch until `fieldtrack deploy` exited, and its exit code.
    exited_after: Duration,
    exit: Option<i32>,
}

/// One request of the canary's load generator: when it was sent (since the load started),
/// which app answered (None: none did), and whether it got a 200.
type Answer = (Duration, Option<String>, bool);

/// The canary's load generator: threads in the edge namespace asking `/version` through
/// the site's nginx, recording who answered each request.
struct TaggedLoad {
    t0: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<Vec<Answer>>>,
}

impl TaggedLoad {
    fn start(site: &SwarmSite) -> TaggedLoad {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let addr = site.nginx_addr();
        let threads = (0..CANARY_THREADS)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let edge = PathBuf::from(format!("/run/netns/{EDGE_NETNS}"));
                    in_netns(&edge, || {
                        let mut answers = Vec::new();
                        while !stop.load(Ordering::Relaxed) {
                            let sent = t0.elapsed();
                            let answer =
                                util::http_get(addr, "/version", Duration::from_secs(2)).ok();
                            answers.push(match answer {
                                Some((status, body)) => {
                                    let (tag, ok) = answered_by(status, &body);
                                    (sent, tag, ok)
                                }
                                None => (sent, None, false),
                            });
                            thread::sleep(CANARY_GAP);
                        }
                        answers
                    })
                    .unwrap_or_default()
                })
            })
            .collect();
        TaggedLoad { t0, stop, threads }
    }

    fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    }
}

/// Which test app answered, from its answer: the tag is the body of a 200 on `/version`,
/// and `err5`'s 500 says `error from err5`. Anything else (nginx's own error pages) names
/// no app.
fn answered_by(status: u16, body: &str) -> (Option<String>, bool) {
    let body = body.trim();
    match status {
        200 => (Some(body.to_string()), true),
        _ => (
            body.strip_prefix("error from ")
                .filter(|tag| !tag.contains(char::is_whitespace))
                .map(str::to_string),
            false,
        ),
    }
}

/// A fieldtrack site of the section, serving [`CANARY_STABLE`] on three replicas.
fn canary_rig(swarm: &Swarm, opts: &Opts, strategy: Strategy) -> Result<Rig> {
    let mut site = new_site(swarm)?;
    site.set("swarm.replicas", &REPLICAS.to_string());
    site.set("rollout.drain", &format!("\"{CANARY_DRAIN}\""));
    site.set("rollout.auto_rollback", "true");
    if strategy == Strategy::Canary {
        // nginx.access_log is set on every bed site already.
        site.set(
            "canary.steps",
            &format!("[{{ weight = {CANARY_WEIGHT}, pause = \"{CANARY_PAUSE}\" }}]"),
        );
        site.set("canary.min_requests", &CANARY_MIN_REQUESTS.to_string());
        site.set("canary.max_error_rate", CANARY_MAX_ERROR_RATE);
    }
    let rig = Rig {
        driver: Driver::Fieldtrack,
        site,
        fieldtrack: opts.fieldtrack.clone(),
    };
    // The first deployment has no stable color, so no canary step either.
    rig.switch_untimed(&rig.deploy(CANARY_STABLE), CANARY_STABLE)?;
    Ok(rig)
}

/// The image the site's desired file names now.
fn desired_image(site: &SwarmSite) -> Option<String> {
    let text = fs::read_to_string(&site.desired_file).ok()?;
    text.lines().find_map(|l| {
        let value = l.trim().strip_prefix("image")?.trim().strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_string())
    })
}

/// Deploys `bad` under load (`fieldtrack deploy`, in-process: no daemon runs) and counts
/// over `window` from the switch; then puts the site back on [`CANARY_STABLE`], by hand
/// where nothing rolled back.
fn bad_run(
    rig: &Rig,
    strategy: Strategy,
    bad: &str,
    run: usize,
    window: Duration,
) -> Result<BadRun> {
    let site = &rig.site;
    let upstream = || fs::read_to_string(&site.upstream_file).unwrap_or_default();
    let before = upstream();
    let load = TaggedLoad::start(site);
    thread::sleep(Duration::from_secs(1));
    let log = fs::File::create(site.dir.join("bench-canary.log")).map_err(|e| e.to_string())?;
    let note = format!("bench run {}", run + 1);
    let mut child = rig
        .ft(&["deploy", bad, "--by", "bench", "--note", &note])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start fieldtrack deploy {bad}: {e}"))?;
    let mut switch: Option<Duration> = None;
    let mut exit: Option<(Duration, Option<i32>)> = None;
    let outcome = loop {
        let now = load.t0.elapsed();
        if switch.is_none() && upstream() != before {
            switch = Some(now);
        }
        if exit.is_none() {
            match child.try_wait() {
                Ok(Some(status)) => exit = Some((now, status.code())),
                Ok(None) => {}
                Err(e) => break Err(e.to_string()),
            }
        }
        match (switch, exit) {
            (Some(s), Some(_)) if now >= s + window => break Ok(()),
            (None, Some((_, code))) => {
                break Err(format!(
                    "fieldtrack deploy {bad} exited ({code:?}) before nginx was switched; see {}",
                    site.dir.join("bench-canary.log").display()
                ))
            }
            _ => {}
        }
        if now > window + COMMAND_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break Err(format!("fieldtrack deploy {bad} did not end"));
        }
        thread::sleep(POLL);
    };
    let answers = load.stop();
    outcome?;
    let (switch, (exited_at, code)) = (switch.unwrap_or_default(), exit.unwrap_or_default());
    let end = switch + window;
    let in_window = |a: &&Answer| (switch..end).contains(&a.0) && a.1.is_some();
    let reached: Vec<&Answer> = answers
        .iter()
        .filter(in_window)
        .filter(|a| a.1.as_deref() == Some(bad))
        .collect();
    let last = reached.iter().map(|a| a.0).max();
    let result = BadRun {
        requests: answers.iter().filter(in_window).count() as u64,
        reached: reached.len() as u64,
        reached_failed: reached.iter().filter(|a| !a.2).count() as u64,
        other_failed: answers.iter().filter(|a| a.1.is_none()).count() as u64,
        back_after: last
            .filter(|t| *t + Duration::from_secs(1) < end)
            .map(|t| t - switch),
        exited_after: exited_at.saturating_sub(switch),
        exit: code,
    };
    eprintln!(
        "bench-swarm:   {bad}, {strategy:?}, run {}: {result:?}",
        run + 1
    );
    if desired_image(site).as_deref() != Some(CANARY_STABLE) {
        rig.switch_untimed(
            &rig.ft(&["deploy", CANARY_STABLE, "--by", "bench"]),
            CANARY_STABLE,
        )?;
    }
    // What the failed attempt left (the candidate scaled to 0, the status) is settled
    // before the next run.
    let settled = run_ok(rig.ft(&["reconcile"]).stdin(Stdio::null()));
    settled.map_err(|e| format!("fieldtrack reconcile after {bad}: {e}"))?;
    Ok(result)
}

/// `median (min-max)` of counts.
fn count_stat(mut values: Vec<u64>) -> String {
    values.sort_unstable();
    match values.as_slice() {
        [] => "-".to_string(),
        [one] => one.to_string(),
        all => {
            let median = median_of(all.iter().map(|v| *v as f64).collect());
            format!("{median:.0} ({}-{})", all[0], all[all.len() - 1])
        }
    }
}

fn canary_section(out: &mut String, swarm: &Swarm, opts: &Opts) -> Result<()> {
    let window = opts.canary_window;
    let strategies = [Strategy::BlueGreen, Strategy::Canary];
    let rigs = [
        canary_rig(swarm, opts, strategies[0])?,
        canary_rig(swarm, opts, strategies[1])?,
    ];
    // (bad image, strategy) -> the runs; interleaved run by run, as the machine is shared.
    let mut runs: BTreeMap<(usize, usize), Vec<BadRun>> = BTreeMap::new();
    for run in 0..opts.canary_runs {
        for (b, bad) in CANARY_BAD.iter().enumerate() {
            for (r, rig) in rigs.iter().enumerate() {
                let result = bad_run(rig, strategies[r], bad, run, window)?;
                runs.entry((b, r)).or_default().push(result);
            }
        }
        eprintln!(
            "bench-swarm:   canary run {}/{} done",
            run + 1,
            opts.canary_runs
        );
    }
    let _ = writeln!(
        out,
        "### Figure 6. The canary: a bad image deployed under load on {} nodes, {REPLICAS} replicas, {} s from the switch\n",
        swarm.nodes.len(),
        window.as_secs()
    );
    let _ = writeln!(
        out,
        "Section f of the single-engine bench on the cluster: the same images, load and settings (B: `steps = [{{ weight = {CANARY_WEIGHT}, pause = \"{CANARY_PAUSE}\" }}]`, `min_requests = {CANARY_MIN_REQUESTS}`, `max_error_rate = {CANARY_MAX_ERROR_RATE}`), {} threads in the edge namespace, a new connection per request, {} ms between a thread's requests; `fieldtrack deploy BAD` in-process 1 s after the load starts. Which app answered: the body of a 200 on `/version`, or err5's `error from err5`. Medians (min-max) of {} runs, interleaved.\n",
        CANARY_THREADS,
        CANARY_GAP.as_millis(),
        opts.canary_runs
    );
    let _ = writeln!(out, "| bad image | strategy | requests in the window | answered by the bad image | of those failed | failed otherwise | switch → back on stable | deploy exits after (exit code) |\n| --- | --- | --- | --- | --- | --- | --- | --- |");
    for ((b, r), runs) in &runs {
        let count = |f: fn(&BadRun) -> u64| count_stat(runs.iter().map(f).collect());
        let stayed = runs.iter().filter(|x| x.back_after.is_none()).count();
        let back = match stayed {
            n if n == runs.len() => format!("never: stays live ({} s counted)", window.as_secs()),
            _ => stat(runs.iter().map(|x| x.back_after)),
        };
        let codes: Vec<String> = runs
            .iter()
            .map(|x| x.exit.map_or("signal".into(), |c| c.to_string()))
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {back} | {} ({}) |",
            CANARY_BAD[*b],
            strategies[*r].label(),
            count(|x| x.requests),
            count(|x| x.reached),
            count(|x| x.reached_failed),
            count(|x| x.other_failed),
            stat(runs.iter().map(|x| Some(x.exited_after))),
            codes.join(", ")
        );
    }
    let _ = writeln!(out);
    Ok(())
}
