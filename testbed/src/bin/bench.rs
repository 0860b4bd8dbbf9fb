//! `bench`: the figures of issue 7 on the real test bed (Docker engine, registry, nginx),
//! printed as one table. Run by `scripts/bench.sh`; the numbers mean what
//! `docs/performance.md` says.
//!
//! ```text
//! bench [--runs N] [--idle-secs S] [--cycles N] [--threads N] [--gap-ms MS]
//!       [--lab-switches N] [--only a,b,c,d,e,f] [--canary-window-secs S]
//!       [--fieldtrack PATH] [--baseline PATH] [--set KEY=TOML]... [--verbose]
//! ```
//!
//! `--set rollout.drain='"2s"'` overrides a key of every fieldtrack site's config after the
//! bench's own settings (`{site}` in the value is the site's folder), to try settings or a
//! patched binary without editing the bench.
//!
//! - a: deploy latency, fieldtrack (in-process) against `bench/baseline.sh`, side by side.
//! - b: rollback latency, cold (the old color was stopped) and warm (inside the drain).
//! - c: zero downtime: a load generator through nginx during deploy/rollback cycles.
//! - d: the daemon idle (CPU, RSS) and its peak RSS during a deployment.
//! - e: the nginx lab: how a reload takes effect, and which settings keep requests whole.
//! - f (issue 14, only when asked: `--only f`, `scripts/bench.sh --canary`): how many
//!   requests reach a bad image, and how many of them fail, with blue/green and its
//!   auto-rollback against a canary step of 10%.
//!
//! Every latency is the median of `--runs` runs, measured from the command's start until
//! nginx serves the target version: `/version` is polled through the site's nginx every
//! 10 ms, each time on a fresh connection. Comparisons run interleaved in the same
//! invocation, because the machine is shared and noisy. Std and libc only, like the bed.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use fieldtrack_testbed::{util, Bed, Site, SiteOptions};

/// How often the served version is polled while a command runs.
const POLL: Duration = Duration::from_millis(10);
/// The longest any single timed command may take before the run is called failed.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// The instant test app's tags the deploy and rollback figures alternate between.
const INSTANT: [&str; 2] = ["v1", "v2"];
/// The app that listens one second after it starts, like a typical app.
const READY1S: &str = "ready1s";

type Result<T> = std::result::Result<T, String>;

fn main() {
    let opts = match Opts::parse(std::env::args().skip(1).collect()) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("bench: {e}\n{}", Opts::USAGE);
            std::process::exit(2);
        }
    };
    match run(&opts) {
        Ok(report) => {
            println!("{report}");
        }
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(1);
        }
    }
}

/// The command line.
struct Opts {
    runs: usize,
    idle_secs: u64,
    cycles: usize,
    threads: usize,
    gap: Duration,
    lab_switches: usize,
    only: Vec<char>,
    canary_window: Duration,
    fieldtrack: PathBuf,
    baseline: PathBuf,
    sets: Vec<(String, String)>,
    verbose: bool,
}

impl Opts {
    const USAGE: &'static str = "usage: bench [--runs N] [--idle-secs S] [--cycles N] [--threads N] [--gap-ms MS] [--lab-switches N] [--only a,b,c,d,e,f] [--canary-window-secs S] [--fieldtrack PATH] [--baseline PATH] [--set KEY=TOML]... [--verbose]";

    fn parse(args: Vec<String>) -> Result<Opts> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the testbed crate lives in the workspace")
            .to_path_buf();
        let mut opts = Opts {
            runs: 5,
            idle_secs: 60,
            cycles: 20,
            threads: 4,
            gap: Duration::from_millis(2),
            lab_switches: 10,
            // f (the canary figures) takes minutes of its own: only when asked.
            only: "abcde".chars().collect(),
            canary_window: Duration::from_secs(30),
            fieldtrack: workspace.join("target/release/fieldtrack"),
            baseline: workspace.join("bench/baseline.sh"),
            sets: Vec::new(),
            verbose: false,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            let number = |v: String| -> Result<u64> {
                v.parse::<u64>()
                    .map_err(|_| format!("{arg}: not a number: {v}"))
            };
            match arg.as_str() {
                "--runs" => opts.runs = number(value()?)?.max(1) as usize,
                "--idle-secs" => opts.idle_secs = number(value()?)?,
                "--cycles" => opts.cycles = number(value()?)?.max(2) as usize,
                "--threads" => opts.threads = number(value()?)?.max(1) as usize,
                "--gap-ms" => opts.gap = Duration::from_millis(number(value()?)?),
                "--lab-switches" => opts.lab_switches = number(value()?)?.max(1) as usize,
                "--only" => {
                    opts.only = value()?.chars().filter(char::is_ascii_alphabetic).collect()
                }
                "--canary-window-secs" => {
                    opts.canary_window = Duration::from_secs(number(value()?)?.max(5))
                }
                "--fieldtrack" => opts.fieldtrack = PathBuf::from(value()?),
                "--baseline" => opts.baseline = PathBuf::from(value()?),
                "--set" => {
                    let set = value()?;
                    let (key, literal) = set
                        .split_once('=')
                        .ok_or_else(|| format!("--set {set}: expected KEY=TOML"))?;
                    opts.sets
                        .push((key.trim().to_string(), literal.trim().to_string()));
                }
                "--verbose" => opts.verbose = true,
                "-h" | "--help" => {
                    println!("{}", Opts::USAGE);
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        // Absolute: the commands run in their site's folder.
        for (what, path) in [
            ("fieldtrack", &mut opts.fieldtrack),
            ("baseline", &mut opts.baseline),
        ] {
            *path = fs::canonicalize(&*path).map_err(|e| {
                format!(
                    "{what} {}: {e} (scripts/bench.sh builds it)",
                    path.display()
                )
            })?;
        }
        Ok(opts)
    }

    fn wants(&self, section: char) -> bool {
        self.only.contains(&section)
    }
}

/// Everything measured, then printed.
struct Report {
    sections: Vec<Section>,
    targets: Vec<Target>,
}

struct Section {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Section {
    fn new(title: &str, header: &[&str]) -> Section {
        Section {
            title: title.to_string(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        eprintln!("bench:   {}", cells.join(" | "));
        self.rows.push(cells);
    }
}

/// One target of the issue, beside the figure it is judged on.
struct Target {
    target: String,
    measured: String,
    met: bool,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for section in &self.sections {
            writeln!(f, "\n### {}\n", section.title)?;
            writeln!(f, "| {} |", section.header.join(" | "))?;
            writeln!(
                f,
                "|{}",
                section.header.iter().map(|_| " --- |").collect::<String>()
            )?;
            for row in &section.rows {
                writeln!(f, "| {} |", row.join(" | "))?;
            }
            for note in &section.notes {
                writeln!(f, "\n{note}")?;
            }
        }
        if !self.targets.is_empty() {
            writeln!(f, "\n### Targets\n")?;
            writeln!(f, "| target | measured | |")?;
            writeln!(f, "| --- | --- | --- |")?;
            for t in &self.targets {
                let verdict = if t.met { "met" } else { "**missed**" };
                writeln!(f, "| {} | {} | {verdict} |", t.target, t.measured)?;
            }
        }
        Ok(())
    }
}

fn run(opts: &Opts) -> Result<Report> {
    let started = Instant::now();
    eprintln!("bench: bringing the test bed up");
    let bed = Bed::up().map_err(|e| e.to_string())?;
    let tools = Tools::new(opts, &bed);
    eprintln!("bench: pulling the test images once, so every figure is for a cached image");
    for tag in INSTANT.iter().chain(&["v3", READY1S]) {
        util::run(bed.docker().args(["pull", "-q", &bed.image(tag)])).map_err(|e| e.to_string())?;
    }
    let mut report = Report {
        sections: Vec::new(),
        targets: Vec::new(),
    };
    report.sections.push(settings_section(opts));

    // The idle daemon runs beside sections a and b: it is idle whatever other sites do.
    let idle = if opts.wants('d') {
        Some(IdleDaemon::start(&tools, opts.idle_secs)?)
    } else {
        None
    };
    if opts.wants('a') {
        deploy_latency(&tools, opts, &mut report)?;
    }
    if opts.wants('b') {
        rollback_latency(&tools, opts, &mut report)?;
    }
    if let Some(idle) = idle {
        idle.finish(&tools, &mut report)?;
    }
    if opts.wants('c') {
        zero_downtime(&tools, opts, &mut report)?;
    }
    if opts.wants('e') {
        nginx_lab(&tools, opts, &mut report)?;
    }
    if opts.wants('f') {
        canary_bench(&tools, opts, &mut report)?;
    }
    eprintln!("bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(report)
}

/// The site settings every figure uses, stated once.
fn settings_section(opts: &Opts) -> Section {
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

// ---------------------------------------------------------------------------------------
// The tools: fieldtrack, the baseline script, sites.
// ---------------------------------------------------------------------------------------

struct Tools<'a> {
    bed: &'a Bed,
    fieldtrack: PathBuf,
    baseline: PathBuf,
    sets: Vec<(String, String)>,
    verbose: bool,
}

impl<'a> Tools<'a> {
    fn new(opts: &Opts, bed: &'a Bed) -> Tools<'a> {
        Tools {
            bed,
            fieldtrack: opts.fieldtrack.clone(),
            baseline: opts.baseline.clone(),
            sets: opts.sets.clone(),
            verbose: opts.verbose,
        }
    }

    /// A new site with production-like settings fit for the bench.
    fn site(&self, drain: &str) -> Result<Site> {
        let mut site = Site::create(self.bed, SiteOptions::default()).map_err(|e| e.to_string())?;
        for (key, value) in [
            ("health.interval", "\"1s\""),
            ("health.timeout", "\"2s\""),
            ("health.attempts", "60"),
            ("container.stop_timeout", "\"10s\""),
            ("rollout.keep_images", "false"),
        ] {
            site.set(key, value);
        }
        site.set("rollout.drain", &format!("\"{drain}\""));
        for (key, literal) in &self.sets {
            site.set(
                key,
                &literal.replace("{site}", &site.dir.display().to_string()),
            );
        }
        Ok(site)
    }

    /// `fieldtrack --config SITE ARGS`, its output appended to the site's `bench.log`.
    fn ft(&self, site: &Site, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.fieldtrack);
        cmd.arg("--config")
            .arg(&site.config_path)
            .args(args)
            .current_dir(&site.dir)
            .env_remove("FIELDTRACK_CONFIG")
            .env_remove("FIELDTRACK_TEST_PAUSE_AT")
            .env_remove("FIELDTRACK_LOG");
        log_to(&mut cmd, site);
        cmd
    }

    /// `bench/baseline.sh` deploying `tag` on the site, configured through the environment.
    fn baseline(&self, site: &Site, tag: &str) -> Command {
        let nginx = |tail: &str| {
            let prefix = site.dir.join("nginx");
            format!(
                "{} -p {} -c {} -e {} {tail}",
                self.bed.nginx.display(),
                prefix.display(),
                prefix.join("nginx.conf").display(),
                prefix.join("logs/error.log").display()
            )
        };
        let mut cmd = Command::new("bash");
        cmd.arg(&self.baseline)
            .current_dir(&site.dir)
            .env("DOCKER_HOST", &self.bed.docker_host)
            .env("REPO", &site.repository)
            .env("TAG", tag)
            .env("APP", &site.app)
            .env("BLUE_PORT", site.blue_port.to_string())
            .env("GREEN_PORT", site.green_port.to_string())
            .env("UPSTREAM_FILE", &site.upstream_file)
            .env("UPSTREAM_NAME", &site.upstream_name)
            .env("NGINX_TEST", nginx("-t -q"))
            .env("NGINX_RELOAD", nginx("-s reload"))
            .env("HISTORY_FILE", &site.history_file);
        log_to(&mut cmd, site);
        cmd
    }

    /// Runs a command to its end, untimed (setting the stage).
    fn setup(&self, mut cmd: Command, what: &str) -> Result<()> {
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        if !status.success() {
            return Err(format!(
                "{what} failed ({status}); see bench.log in the site folder"
            ));
        }
        Ok(())
    }
}

fn log_to(cmd: &mut Command, site: &Site) {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(site.dir.join("bench.log"));
    cmd.stdin(Stdio::null());
    match log.and_then(|f| Ok((f.try_clone()?, f))) {
        Ok((out, err)) => {
            cmd.stdout(out).stderr(err);
        }
        Err(_) => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
    }
}

/// How long a timed command took: until nginx served the target, and until it exited.
#[derive(Debug, Clone, Copy)]
struct Timed {
    served: Duration,
    exited: Duration,
}

/// Starts `cmd`, polls `/version` through the site's nginx every 10 ms on a fresh connection
/// until it answers `target`, then waits for the command to end (it must succeed).
fn timed(site: &Site, target: &str, mut cmd: Command, what: &str) -> Result<Timed> {
    let addr = site.nginx_addr();
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let mut exited_ok_at: Option<Instant> = None;
    let served = loop {
        if version(addr).as_deref() == Some(target) {
            break start.elapsed();
        }
        if exited_ok_at.is_none() {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                if !status.success() {
                    return Err(format!(
                        "{what} failed ({status}) before nginx served {target}; see {}",
                        site.dir.join("bench.log").display()
                    ));
                }
                exited_ok_at = Some(Instant::now());
            }
        }
        if exited_ok_at.is_some_and(|t| t.elapsed() > Duration::from_secs(10))
            || start.elapsed() > COMMAND_LIMIT
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what}: nginx never served {target}"));
        }
        thread::sleep(POLL);
    };
    let status = wait_child(&mut child, COMMAND_LIMIT, what)?;
    if !status.success() {
        return Err(format!(
            "{what} failed ({status}) after nginx served {target}"
        ));
    }
    Ok(Timed {
        served,
        exited: start.elapsed(),
    })
}

/// Waits until nginx serves `tag`, then until its old workers are surely gone.
fn settle(site: &Site, tag: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while version(site.nginx_addr()).as_deref() != Some(tag) {
        if Instant::now() > deadline {
            return Err(format!("site {} never served {tag}", site.app));
        }
        thread::sleep(POLL);
    }
    thread::sleep(Duration::from_millis(500));
    Ok(())
}

fn wait_child(child: &mut Child, limit: Duration, what: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not end within {limit:?}"));
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// What nginx serves on `/version`, on a fresh connection; None on anything but a 200.
fn version(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /version HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    Some(body.trim().to_string())
}

/// The site's live tag through nginx, or an error naming the site.
fn served(site: &Site) -> Result<String> {
    version(site.nginx_addr()).ok_or_else(|| format!("site {} serves nothing", site.app))
}

/// A sample of durations in seconds.
#[derive(Debug, Clone, Default)]
struct Sample(Vec<f64>);

impl Sample {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64());
    }

    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn min(&self) -> f64 {
        self.0.iter().copied().fold(f64::INFINITY, f64::min)
    }

    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// `1.234 s (1.100-1.400)`.
    fn show(&self) -> String {
        if self.0.is_empty() {
            return "-".into();
        }
        format!(
            "{:.3} s ({:.3}-{:.3})",
            self.median(),
            self.min(),
            self.max()
        )
    }
}

fn secs(x: f64) -> String {
    format!("{x:.3} s")
}

// ---------------------------------------------------------------------------------------
// a. Deploy latency.
// ---------------------------------------------------------------------------------------

fn deploy_latency(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    eprintln!(
        "bench: a. deploy latency, fieldtrack against baseline.sh ({} runs)",
        opts.runs
    );
    let ft_site = tools.site("0s")?;
    let base_site = tools.site("0s")?;
    tools.setup(
        tools.ft(&ft_site, &["deploy", "v3", "--by", "bench"]),
        "fieldtrack deploy v3",
    )?;
    tools.setup(tools.baseline(&base_site, "v3"), "baseline.sh v3")?;

    let mut ft_instant = (Sample::default(), Sample::default());
    let mut ft_ready = (Sample::default(), Sample::default());
    let mut base_instant = Sample::default();
    let mut base_ready = Sample::default();
    for run in 0..opts.runs {
        // Each run deploys an instant tag (from ready1s, or v3 at first), then ready1s.
        let tag = INSTANT[run % 2];
        let t = timed(
            &ft_site,
            tag,
            tools.ft(&ft_site, &["deploy", tag, "--by", "bench"]),
            "fieldtrack deploy",
        )?;
        ft_instant.0.push(t.served);
        ft_instant.1.push(t.exited);
        let t = timed(
            &base_site,
            tag,
            tools.baseline(&base_site, tag),
            "baseline.sh",
        )?;
        base_instant.push(t.served);
        let t = timed(
            &ft_site,
            READY1S,
            tools.ft(&ft_site, &["deploy", READY1S, "--by", "bench"]),
            "fieldtrack deploy",
        )?;
        ft_ready.0.push(t.served);
        ft_ready.1.push(t.exited);
        let t = timed(
            &base_site,
            READY1S,
            tools.baseline(&base_site, READY1S),
            "baseline.sh",
        )?;
        base_ready.push(t.served);
        eprintln!("bench:   run {}/{} done", run + 1, opts.runs);
    }

    let mut s = Section::new(
        "a. Deploy latency: command start until nginx serves the new version (image cached)",
        &[
            "app",
            "fieldtrack deploy",
            "baseline.sh",
            "baseline / fieldtrack",
            "fieldtrack exits after",
            "target",
        ],
    );
    let ratio_instant = base_instant.median() / ft_instant.0.median();
    let ratio_ready = base_ready.median() / ft_ready.0.median();
    s.row(vec![
        "v* (listens at once)".into(),
        ft_instant.0.show(),
        base_instant.show(),
        format!("{ratio_instant:.1}x"),
        ft_instant.1.show(),
        "-".into(),
    ]);
    s.row(vec![
        "ready1s (listens after 1 s)".into(),
        ft_ready.0.show(),
        base_ready.show(),
        format!("{ratio_ready:.1}x"),
        ft_ready.1.show(),
        format!("at least 2x faster: {}", verdict(ratio_ready >= 2.0)),
    ]);
    s.notes.push(
        "fieldtrack: `fieldtrack deploy TAG` without a daemon (in-process), rollout.drain 0s (the drain only delays the exit, never the switch). baseline.sh: the seed's steps, health check 20 x 3 s. Both on their own site, interleaved run by run.".into(),
    );
    report.targets.push(Target {
        target: "deploy of ready1s at least 2x faster than baseline.sh".into(),
        measured: format!(
            "{ratio_ready:.1}x ({} against {})",
            secs(ft_ready.0.median()),
            secs(base_ready.median())
        ),
        met: ratio_ready >= 2.0,
    });
    report.sections.push(s);
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**missed**"
    }
}

// ---------------------------------------------------------------------------------------
// b. Rollback latency.
// ---------------------------------------------------------------------------------------

fn rollback_latency(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    eprintln!(
        "bench: b. rollback latency, cold and warm ({} runs)",
        opts.runs
    );
    // Cold: in-process, drain 0s, so the previous color is gone when the rollback starts.
    let site = tools.site("0s")?;
    tools.setup(
        tools.ft(&site, &["deploy", "v1", "--by", "bench"]),
        "fieldtrack deploy v1",
    )?;
    tools.setup(
        tools.ft(&site, &["deploy", READY1S, "--by", "bench"]),
        "fieldtrack deploy ready1s",
    )?;
    let mut cold_instant = Sample::default();
    let mut cold_ready = Sample::default();
    let mut ready_instant = Sample::default();
    let mut ready_ready = Sample::default();
    let ready_port = util::free_ports(1).map_err(|e| e.to_string())?[0];
    for run in 0..opts.runs {
        // History [ready1s, v1]: rollback starts v1; then [v1, ready1s]: rollback starts ready1s.
        let t = timed(
            &site,
            "v1",
            tools.ft(&site, &["rollback", "--yes", "--by", "bench"]),
            "fieldtrack rollback",
        )?;
        cold_instant.push(t.served);
        let t = timed(
            &site,
            READY1S,
            tools.ft(&site, &["rollback", "--yes", "--by", "bench"]),
            "fieldtrack rollback",
        )?;
        cold_ready.push(t.served);
        // The app's own ready time: create and start it through the Docker API, as fieldtrack
        // does, and poll its /health directly every 10 ms.
        ready_instant.push(app_ready_time(tools.bed, "v1", ready_port, run)?);
        ready_ready.push(app_ready_time(tools.bed, READY1S, ready_port, run)?);
        eprintln!("bench:   cold run {}/{} done", run + 1, opts.runs);
    }
    drop(site);

    // Warm: the daemon with a long drain; while `deploy v2` drains, the rollback goes back to
    // v1, which still runs: a pure nginx switch.
    let site = tools.site("5s")?;
    tools.setup(
        tools.ft(&site, &["deploy", "v2", "--by", "bench"]),
        "fieldtrack deploy v2",
    )?;
    tools.setup(
        tools.ft(&site, &["deploy", "v1", "--by", "bench"]),
        "fieldtrack deploy v1",
    )?;
    let daemon = Daemon::start(tools, &site)?;
    daemon.wait_converged(&site, "v1")?;
    // First, what `rollback --yes` does inside the drain window of v2: it must go back to
    // v1, which still runs. The history gains v2 only once v2's drain is over, so a rollback
    // that reads "current" from the history's head goes one version too far back.
    let forward = enter_drain(tools, &site, "v2")?;
    let history_then = fs::read_to_string(&site.history_file).unwrap_or_default();
    tools.setup(
        tools.ft(&site, &["rollback", "--yes", "--no-wait", "--by", "bench"]),
        "fieldtrack rollback --yes --no-wait",
    )?;
    let chosen = desired_image(&site).unwrap_or_default();
    finish_superseded(forward)?;
    daemon.wait_converged(&site, &chosen)?;
    let rollback_works = chosen == "v1";
    if !rollback_works {
        tools.setup(
            tools.ft(&site, &["deploy", "v1", "--by", "bench"]),
            "fieldtrack deploy v1",
        )?;
        daemon.wait_converged(&site, "v1")?;
    }
    let warm_command: &[&str] = if rollback_works {
        &["rollback", "--yes", "--by", "bench"]
    } else {
        &[
            "deploy",
            "v1",
            "--by",
            "bench",
            "--note",
            "rollback by hand",
        ]
    };
    let mut warm = Sample::default();
    let mut warm_exit = Sample::default();
    for run in 0..opts.runs {
        let forward = enter_drain(tools, &site, "v2")?;
        let t = timed(&site, "v1", tools.ft(&site, warm_command), "warm rollback")?;
        warm.push(t.served);
        warm_exit.push(t.exited);
        finish_superseded(forward)?;
        daemon.wait_converged(&site, "v1")?;
        eprintln!("bench:   warm run {}/{} done", run + 1, opts.runs);
    }
    let warm_how = if rollback_works {
        "`fieldtrack rollback --yes`".to_string()
    } else {
        "`fieldtrack deploy v1` (the runbook's rollback by hand)".to_string()
    };
    let rollback_note = if rollback_works {
        "`rollback --yes` inside the drain window of v2 went back to v1 (still running): a pure nginx switch.".to_string()
    } else {
        format!(
            "**`rollback --yes` inside the drain window of v2 (v1 still running) wrote `{chosen}` to the desired file instead of v1**: it takes \"current\" from the history's head ({}), and the history gains v2 only after v2's drain. The warm figure therefore uses {warm_how}.",
            history_then.lines().collect::<Vec<_>>().join(", ")
        )
    };
    daemon.stop()?;
    drop(site);

    let mut s = Section::new(
        "b. Rollback latency: command start until nginx serves the previous version",
        &[
            "rollback",
            "fieldtrack",
            "app's own ready time",
            "over ready time",
            "target",
        ],
    );
    let over_instant = cold_instant.median() - ready_instant.median();
    let over_ready = cold_ready.median() - ready_ready.median();
    s.row(vec![
        "cold, v* (previous color stopped: starts a container)".into(),
        cold_instant.show(),
        ready_instant.show(),
        secs(over_instant),
        format!("within 0.3 s of ready: {}", verdict(over_instant <= 0.3)),
    ]);
    s.row(vec![
        "cold, ready1s".into(),
        cold_ready.show(),
        ready_ready.show(),
        secs(over_ready),
        format!("within 0.3 s of ready: {}", verdict(over_ready <= 0.3)),
    ]);
    s.row(vec![
        "warm, v* (inside the 5 s drain, daemon: a pure nginx switch)".into(),
        warm.show(),
        "-".into(),
        "-".into(),
        format!("under 0.15 s: {}", verdict(warm.median() < 0.15)),
    ]);
    s.notes.push(format!(
        "cold: `fieldtrack rollback --yes` in-process, rollout.drain 0s. App's own ready time: Docker API create + start of the same image, then GET /health on the published port every 10 ms until 200 (no fieldtrack). warm: daemon running, rollout.drain 5s, {warm_how} while `deploy v2` drains (v1 still running); the command exits after its own drain, {} after its start.",
        warm_exit.show()
    ));
    s.notes.push(rollback_note);
    report.targets.push(Target {
        target: "cold rollback within 0.3 s of the app's own ready time (v*)".into(),
        measured: format!(
            "+{} ({} against {})",
            secs(over_instant),
            secs(cold_instant.median()),
            secs(ready_instant.median())
        ),
        met: over_instant <= 0.3,
    });
    report.targets.push(Target {
        target: "cold rollback within 0.3 s of the app's own ready time (ready1s)".into(),
        measured: format!(
            "+{} ({} against {})",
            secs(over_ready),
            secs(cold_ready.median()),
            secs(ready_ready.median())
        ),
        met: over_ready <= 0.3,
    });
    report.targets.push(Target {
        target: "warm rollback under 0.15 s".into(),
        measured: secs(warm.median()),
        met: warm.median() < 0.15,
    });
    report.sections.push(s);
    Ok(())
}

/// Starts `fieldtrack deploy TAG` through the daemon and returns once nginx serves it and
/// the daemon is in that deployment's drain (the old color still running).
fn enter_drain(tools: &Tools, site: &Site, tag: &str) -> Result<Child> {
    let mut child = tools
        .ft(site, &["deploy", tag, "--by", "bench"])
        .spawn()
        .map_err(|e| format!("cannot start fieldtrack deploy {tag}: {e}"))?;
    let deadline = Instant::now() + COMMAND_LIMIT;
    loop {
        let status = fs::read_to_string(site.state_dir.join("status.json")).unwrap_or_default();
        if json_str(&status, "desired").as_deref() == Some(tag)
            && json_str(&status, "step").as_deref() == Some("draining")
            && version(site.nginx_addr()).as_deref() == Some(tag)
        {
            // nginx's old workers answer for about 100 ms after a reload: let them go, so
            // the rollback starts from a clean switch.
            thread::sleep(Duration::from_millis(300));
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "fieldtrack deploy {tag} ended ({status}) before its drain"
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("fieldtrack deploy {tag} never reached its drain"));
        }
        thread::sleep(POLL);
    }
}

/// Waits for a `deploy` whose generation was superseded (it exits 1 saying so).
fn finish_superseded(mut child: Child) -> Result<()> {
    wait_child(&mut child, COMMAND_LIMIT, "the superseded deploy").map(|_| ())
}

fn desired_image(site: &Site) -> Option<String> {
    let text = fs::read_to_string(&site.desired_file).ok()?;
    text.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        (key.trim() == "image").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// Creates and starts the image through the Docker API (as fieldtrack does), publishes it on
/// `port`, and returns how long until its /health answers 200. The container is removed.
fn app_ready_time(bed: &Bed, tag: &str, port: u16, run: usize) -> Result<Duration> {
    let name = format!("fieldtrack-bench-ready-{}-{run}-{tag}", std::process::id());
    let body = format!(
        r#"{{"Image":"{}","ExposedPorts":{{"8080/tcp":{{}}}},"Labels":{{"fieldtrack.bench":"ready"}},"HostConfig":{{"PortBindings":{{"8080/tcp":[{{"HostIp":"127.0.0.1","HostPort":"{port}"}}]}}}}}}"#,
        bed.image(tag)
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    let result = (|| {
        docker_api(
            bed,
            "POST",
            &format!("/containers/create?name={name}"),
            &body,
            201,
        )?;
        docker_api(bed, "POST", &format!("/containers/{name}/start"), "", 204)?;
        loop {
            if matches!(
                util::http_get(addr, "/health", Duration::from_secs(1)),
                Ok((200, _))
            ) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("{tag} never answered /health on port {port}"));
            }
            thread::sleep(POLL);
        }
    })();
    let _ = docker_api(
        bed,
        "DELETE",
        &format!("/containers/{name}?force=true"),
        "",
        204,
    );
    result
}

/// One request to the Docker Engine API on the bed's unix socket; checks the status.
fn docker_api(bed: &Bed, method: &str, path: &str, body: &str, want: u16) -> Result<String> {
    let socket = bed
        .docker_host
        .strip_prefix("unix://")
        .ok_or_else(|| format!("DOCKER_HOST {} is not a unix socket", bed.docker_host))?;
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("{socket}: {e}"))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != want {
        return Err(format!(
            "docker {method} {path}: {}",
            util::last_lines(&text, 3)
        ));
    }
    Ok(text)
}

/// A string field of a JSON object (`"key": "value"`), None for null or missing; enough for
/// status.json, whose strings hold no escaped quotes.
fn json_str(text: &str, key: &str) -> Option<String> {
    let at = text.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = text[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

// ---------------------------------------------------------------------------------------
// The daemon.
// ---------------------------------------------------------------------------------------

struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    fn start(tools: &Tools, site: &Site) -> Result<Daemon> {
        let child = tools
            .ft(site, &["daemon"])
            .spawn()
            .map_err(|e| format!("cannot start the daemon: {e}"))?;
        let daemon = Daemon { child: Some(child) };
        let lock = site.state_dir.join("reconcile.lock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::read_to_string(&lock).is_ok_and(|t| t.starts_with("daemon")) {
            if Instant::now() > deadline {
                return Err("the daemon did not take the reconcile lock".into());
            }
            thread::sleep(POLL);
        }
        Ok(daemon)
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn wait_converged(&self, site: &Site, tag: &str) -> Result<()> {
        let deadline = Instant::now() + COMMAND_LIMIT;
        loop {
            let status = fs::read_to_string(site.state_dir.join("status.json")).unwrap_or_default();
            if json_str(&status, "desired").as_deref() == Some(tag)
                && json_str(&status, "phase").as_deref() == Some("converged")
                && version(site.nginx_addr()).as_deref() == Some(tag)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the daemon did not converge to {tag}: {status}"));
            }
            thread::sleep(POLL);
        }
    }

    /// SIGTERM, then waits for the exit.
    fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_child(&mut child, Duration::from_secs(60), "the daemon").map(|_| ())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            if wait_child(&mut child, Duration::from_secs(30), "the daemon").is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// CPU seconds (utime + stime) of a process, from /proc/PID/stat.
fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("odd /proc stat")?;
    // Fields after the command: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(14) + ticks(15)) as f64 / hz)
}

/// A `Vm…` line of /proc/PID/status, in MiB.
fn vm_mib(pid: i32, key: &str) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| format!("no {key} for pid {pid}"))
}

// ---------------------------------------------------------------------------------------
// d. The daemon idle, and its memory during a deployment.
// ---------------------------------------------------------------------------------------

/// A daemon left alone on its own site while other sections run.
struct IdleDaemon {
    site: Site,
    daemon: Daemon,
    rss_start: f64,
    /// Sampled exactly `idle_secs` after the start: (seconds, CPU seconds used, VmRSS, VmHWM).
    sample: thread::JoinHandle<Result<(f64, f64, f64, f64)>>,
}

impl IdleDaemon {
    fn start(tools: &Tools, idle_secs: u64) -> Result<IdleDaemon> {
        eprintln!("bench: d. the daemon idle for {idle_secs} s (beside sections a and b)");
        // Production defaults for the daemon: resync 30 s, drain 5 s.
        let site = tools.site("5s")?;
        tools.setup(
            tools.ft(&site, &["deploy", "v1", "--by", "bench"]),
            "fieldtrack deploy v1",
        )?;
        let daemon = Daemon::start(tools, &site)?;
        daemon.wait_converged(&site, "v1")?;
        // Let the first pass settle before the idle window starts.
        thread::sleep(Duration::from_secs(1));
        let pid = daemon.pid();
        let rss_start = vm_mib(pid, "VmRSS")?;
        let cpu_at_start = cpu_seconds(pid)?;
        let since = Instant::now();
        let sample = thread::spawn(move || {
            thread::sleep(Duration::from_secs(idle_secs));
            let cpu = cpu_seconds(pid)? - cpu_at_start;
            let idle_for = since.elapsed().as_secs_f64();
            Ok((idle_for, cpu, vm_mib(pid, "VmRSS")?, vm_mib(pid, "VmHWM")?))
        });
        Ok(IdleDaemon {
            site,
            daemon,
            rss_start,
            sample,
        })
    }

    fn finish(self, tools: &Tools, report: &mut Report) -> Result<()> {
        if !self.sample.is_finished() {
            eprintln!("bench: d. waiting for the end of the idle window");
        }
        let (idle_for, cpu, rss_idle, hwm_idle) = self
            .sample
            .join()
            .map_err(|_| "the idle sampler panicked".to_string())??;
        let pid = self.daemon.pid();
        // A deployment through the daemon, sampling RSS meanwhile.
        let mut child = tools
            .ft(&self.site, &["deploy", "v2", "--by", "bench"])
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut rss_peak_sampled = 0.0f64;
        let status = loop {
            rss_peak_sampled = rss_peak_sampled.max(vm_mib(pid, "VmRSS").unwrap_or(0.0));
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            thread::sleep(POLL);
        };
        if !status.success() {
            return Err(format!("deploy v2 through the daemon failed ({status})"));
        }
        let hwm_deploy = vm_mib(pid, "VmHWM")?;
        let rss_after = vm_mib(pid, "VmRSS")?;
        self.daemon.stop()?;

        let mut s = Section::new(
            "d. The daemon: idle, and during a deployment",
            &["figure", "value", "target"],
        );
        let tick = 1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        s.row(vec![
            format!(
                "CPU time while idle for {idle_for:.0} s (utime + stime, in ticks of {tick} s)"
            ),
            format!("{cpu:.2} s ({:.3} % of one core)", 100.0 * cpu / idle_for),
            "-".into(),
        ]);
        s.row(vec![
            "RSS (VmRSS) at the start of the idle window / at its end".into(),
            format!("{:.1} MiB / {rss_idle:.1} MiB", self.rss_start),
            format!("idle RSS under 20 MiB: {}", verdict(rss_idle < 20.0)),
        ]);
        s.row(vec![
            "peak RSS (VmHWM) before the deployment / after it".into(),
            format!("{hwm_idle:.1} MiB / {hwm_deploy:.1} MiB"),
            "-".into(),
        ]);
        s.row(vec![
            "RSS sampled every 10 ms during the deployment: max / after".into(),
            format!("{rss_peak_sampled:.1} MiB / {rss_after:.1} MiB"),
            "-".into(),
        ]);
        s.notes.push(
            "The daemon on its own site with rollout.resync 30s (so the idle window holds two full passes), drain 5s; the deployment is `fieldtrack deploy v2` followed through the daemon.".into(),
        );
        report.targets.push(Target {
            target: "idle RSS under 20 MiB".into(),
            measured: format!("{rss_idle:.1} MiB"),
            met: rss_idle < 20.0,
        });
        report.sections.push(s);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// c. Zero downtime under load.
// ---------------------------------------------------------------------------------------

/// How the load generator's clients use connections.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Conn {
    /// A new connection per request (`Connection: close`).
    Close,
    /// One persistent connection per thread, reopened when nginx closes it.
    KeepAlive,
}

impl Conn {
    fn name(self) -> &'static str {
        match self {
            Conn::Close => "new connection per request",
            Conn::KeepAlive => "keep-alive",
        }
    }
}

/// What the load generator saw.
#[derive(Debug, Default)]
struct LoadStats {
    requests: u64,
    ok: u64,
    /// Failure kind ("HTTP 502", "connect: refused", ...) -> count.
    failures: BTreeMap<String, u64>,
    /// Requests whose reused keep-alive connection was closed by nginx before any byte of
    /// the answer, then sent again once on a new connection (RFC 9112, 9.3.1).
    retried: u64,
    /// Answers that carried `Connection: close` (nginx's old workers say so while exiting).
    closed_by_header: u64,
    latencies_us: Vec<u32>,
    /// (seconds since the load started, kind) of the first failures, for the diagnosis.
    first_failures: Vec<(f64, String)>,
    /// Every answer that named the app's tag (its `X-Testapp-Tag` header), by tag: (seconds
    /// since the load started when the request went out, answered 2xx). Section f counts
    /// what each image answered from it.
    by_tag: BTreeMap<String, Vec<(f32, bool)>>,
}

impl LoadStats {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }

    fn merge(&mut self, other: LoadStats) {
        self.requests += other.requests;
        self.ok += other.ok;
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        self.retried += other.retried;
        self.closed_by_header += other.closed_by_header;
        self.latencies_us.extend(other.latencies_us);
        self.first_failures.extend(other.first_failures);
        self.first_failures.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.first_failures.truncate(20);
        for (tag, answers) in other.by_tag {
            self.by_tag.entry(tag).or_default().extend(answers);
        }
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    fn failure_text(&self) -> String {
        if self.failures.is_empty() {
            return "0".into();
        }
        let kinds: Vec<String> = self
            .failures
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        format!("**{}** ({})", self.failed(), kinds.join(", "))
    }
}

/// Threads sending GET /version through nginx until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<LoadStats>>,
    /// The instant the threads' times count from.
    t0: Instant,
}

impl Load {
    fn start(addr: SocketAddr, conn: Conn, threads: usize, gap: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                thread::spawn(move || load_thread(addr, conn, gap, &stop, t0))
            })
            .collect();
        Load { stop, threads, t0 }
    }

    fn finish(self) -> LoadStats {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = LoadStats::default();
        for t in self.threads {
            if let Ok(stats) = t.join() {
                all.merge(stats);
            }
        }
        all
    }
}

/// One client: requests back to back (with `gap` between them), every outcome counted.
fn load_thread(
    addr: SocketAddr,
    conn: Conn,
    gap: Duration,
    stop: &AtomicBool,
    t0: Instant,
) -> LoadStats {
    let mut stats = LoadStats::default();
    let mut kept: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let sent_at = t0.elapsed().as_secs_f32();
        let reused = kept.is_some();
        let mut outcome = request(addr, conn, &mut kept);
        if let Err(Failure::BeforeAnswer(_)) = &outcome {
            if reused {
                // The server closed a kept-alive connection as the request went out: what
                // browsers, curl and Go's net/http send a GET again on a new one.
                stats.retried += 1;
                kept = None;
                outcome = request(addr, conn, &mut kept);
            }
        }
        stats.requests += 1;
        match outcome {
            Ok(answer) => {
                if answer.close {
                    stats.closed_by_header += 1;
                }
                if let Some(tag) = answer.tag {
                    let ok = (200..300).contains(&answer.status);
                    stats.by_tag.entry(tag).or_default().push((sent_at, ok));
                }
                if (200..300).contains(&answer.status) {
                    stats.ok += 1;
                    let us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    stats.latencies_us.push(us);
                } else {
                    stats.fail(t0, format!("HTTP {}", answer.status));
                }
            }
            Err(f) => {
                kept = None;
                stats.fail(t0, f.kind());
            }
        }
        if !gap.is_zero() {
            thread::sleep(gap);
        }
    }
    stats
}

impl LoadStats {
    fn fail(&mut self, t0: Instant, kind: String) {
        if self.first_failures.len() < 20 {
            self.first_failures
                .push((t0.elapsed().as_secs_f64(), kind.clone()));
        }
        *self.failures.entry(kind).or_default() += 1;
    }
}

struct Answer {
    status: u16,
    close: bool,
    /// The test app's `X-Testapp-Tag` header: which image answered (None: nginx did).
    tag: Option<String>,
}

enum Failure {
    Connect(std::io::Error),
    /// Nothing of an answer arrived (write failed, EOF or reset before the status line).
    BeforeAnswer(String),
    /// The answer started but broke off.
    MidAnswer(String),
}

impl Failure {
    fn kind(&self) -> String {
        match self {
            Failure::Connect(e) => format!("connect: {}", io_kind(e)),
            Failure::BeforeAnswer(e) => format!("closed before the answer: {e}"),
            Failure::MidAnswer(e) => format!("answer broken off: {e}"),
        }
    }
}

fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "refused".into(),
        std::io::ErrorKind::ConnectionReset => "reset".into(),
        std::io::ErrorKind::UnexpectedEof => "eof".into(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".into(),
        std::io::ErrorKind::BrokenPipe => "broken pipe".into(),
        _ => e.to_string(),
    }
}

/// One GET on the kept connection (or a new one); keeps the connection when it may be reused.
fn request(
    addr: SocketAddr,
    conn: Conn,
    kept: &mut Option<BufReader<TcpStream>>,
) -> std::result::Result<Answer, Failure> {
    let mut reader = match kept.take() {
        Some(r) => r,
        None => {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(Failure::Connect)?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = s.set_nodelay(true);
            BufReader::new(s)
        }
    };
    let req: &[u8] = match conn {
        Conn::Close => b"GET /version HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n",
        Conn::KeepAlive => b"GET /version HTTP/1.1\r\nHost: bench\r\n\r\n",
    };
    reader
        .get_mut()
        .write_all(req)
        .map_err(|e| Failure::BeforeAnswer(io_kind(&e)))?;
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => return Err(Failure::BeforeAnswer("eof".into())),
        Ok(_) => {}
        Err(e) => return Err(Failure::BeforeAnswer(io_kind(&e))),
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Failure::MidAnswer(format!("not HTTP: {:?}", line.trim())))?;
    let mut length: Option<usize> = None;
    let mut close = false;
    let mut tag = None;
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) => return Err(Failure::MidAnswer("eof in the headers".into())),
            Ok(_) => {}
            Err(e) => return Err(Failure::MidAnswer(io_kind(&e))),
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let (name, value) = (
            name.trim().to_ascii_lowercase(),
            value.trim().to_ascii_lowercase(),
        );
        if name == "content-length" {
            length = value.parse().ok();
        } else if name == "connection" && value == "close" {
            close = true;
        } else if name == "x-testapp-tag" {
            tag = Some(value);
        }
    }
    match length {
        Some(n) => {
            let mut body = vec![0u8; n];
            reader
                .read_exact(&mut body)
                .map_err(|e| Failure::MidAnswer(io_kind(&e)))?;
        }
        None => {
            let mut body = Vec::new();
            reader
                .read_to_end(&mut body)
                .map_err(|e| Failure::MidAnswer(io_kind(&e)))?;
            close = true;
        }
    }
    if conn == Conn::KeepAlive && !close {
        *kept = Some(reader);
    }
    Ok(Answer { status, close, tag })
}

/// Who drives the cycles of a load run.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Driver {
    /// The fieldtrack daemon with this drain: `deploy v2` and `rollback --yes`, alternating.
    Daemon(&'static str),
    /// `baseline.sh v2`, `baseline.sh v1`, alternating.
    Baseline,
}

fn zero_downtime(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    eprintln!(
        "bench: c. zero downtime: load through nginx during {} deploy/rollback cycles",
        opts.cycles
    );
    // The comparisons only show how failures come about: half the cycles do.
    let fewer = (opts.cycles / 2).max(2);
    let runs = [
        (Driver::Daemon("1s"), Conn::Close, opts.cycles, true),
        (Driver::Daemon("1s"), Conn::KeepAlive, opts.cycles, true),
        (Driver::Daemon("0s"), Conn::Close, fewer, false),
        (Driver::Baseline, Conn::Close, fewer, false),
    ];
    let mut s = Section::new(
        "c. Zero downtime: deploy/rollback cycles alternating v1/v2 under load through nginx",
        &[
            "driver",
            "clients",
            "cycles",
            "requests",
            "failed",
            "keep-alive closes retried",
            "p50",
            "p99",
            "max",
            "target",
        ],
    );
    for (driver, conn, cycles, judged) in runs {
        let (mut stats, cycle_starts) = load_run(tools, opts, driver, conn, cycles)?;
        let driver_name = match driver {
            Driver::Daemon(drain) => format!("fieldtrack daemon, drain {drain}"),
            Driver::Baseline => "baseline.sh (no drain)".into(),
        };
        let failed = stats.failed();
        s.row(vec![
            driver_name.clone(),
            conn.name().into(),
            cycles.to_string(),
            stats.requests.to_string(),
            stats.failure_text(),
            if conn == Conn::KeepAlive {
                stats.retried.to_string()
            } else {
                "-".into()
            },
            format!("{:.2} ms", stats.percentile_ms(0.50)),
            format!("{:.2} ms", stats.percentile_ms(0.99)),
            format!("{:.1} ms", stats.percentile_ms(1.0)),
            if judged {
                format!("zero failed: {}", verdict(failed == 0))
            } else {
                "(for comparison)".into()
            },
        ]);
        if tools.verbose && conn == Conn::KeepAlive {
            eprintln!(
                "bench:   {} answers carried `Connection: close`; {} keep-alive closes retried",
                stats.closed_by_header, stats.retried
            );
        }
        if failed > 0 && tools.verbose {
            let when: Vec<String> = stats
                .first_failures
                .iter()
                .take(8)
                .map(|(t, kind)| {
                    let since = cycle_starts
                        .iter()
                        .rev()
                        .find(|c| **c <= *t)
                        .map_or(String::new(), |c| {
                            format!(" ({:.0} ms into its cycle)", (t - c) * 1000.0)
                        });
                    format!("{t:.2} s {kind}{since}")
                })
                .collect();
            eprintln!(
                "bench:   first failures of {driver_name}, {}: {}",
                conn.name(),
                when.join("; ")
            );
        }
        if judged {
            report.targets.push(Target {
                target: format!("zero failed requests ({}, {})", driver_name, conn.name()),
                measured: format!(
                    "{failed} of {}{}",
                    stats.requests,
                    if conn == Conn::KeepAlive {
                        format!("; {} keep-alive closes retried", stats.retried)
                    } else {
                        String::new()
                    }
                ),
                met: failed == 0,
            });
        }
    }
    s.notes.push(format!(
        "Each cycle is `fieldtrack deploy v2` or `fieldtrack rollback --yes` (back to v1), both followed through the daemon, or baseline.sh for v2 then v1. Failed: every non-2xx answer and every connection error. A keep-alive client whose idle connection nginx closed as the request went out (an old worker exiting after the reload) sends the request again once on a new connection, as browsers, curl and Go's net/http do for a GET (RFC 9112, 9.3.1); these are counted under \"retried\", and a retry that fails counts as failed. Latency: per request, retry included. {} threads, {} ms between a thread's requests.",
        opts.threads,
        opts.gap.as_millis()
    ));
    report.sections.push(s);
    Ok(())
}

/// One load run: a site, the driver, the load, the cycles. Returns the load's figures and
/// the start of every cycle (seconds since the load started).
fn load_run(
    tools: &Tools,
    opts: &Opts,
    driver: Driver,
    conn: Conn,
    cycles: usize,
) -> Result<(LoadStats, Vec<f64>)> {
    eprintln!("bench:   {driver:?}, {}", conn.name());
    let drain = match driver {
        Driver::Daemon(drain) => drain,
        Driver::Baseline => "0s",
    };
    let site = tools.site(drain)?;
    let mut daemon = None;
    match driver {
        Driver::Daemon(_) => {
            // History [v1, v2]: `rollback --yes` goes back to v1 after every `deploy v2`.
            tools.setup(
                tools.ft(&site, &["deploy", "v2", "--by", "bench"]),
                "fieldtrack deploy v2",
            )?;
            tools.setup(
                tools.ft(&site, &["deploy", "v1", "--by", "bench"]),
                "fieldtrack deploy v1",
            )?;
            let d = Daemon::start(tools, &site)?;
            d.wait_converged(&site, "v1")?;
            daemon = Some(d);
        }
        Driver::Baseline => tools.setup(tools.baseline(&site, "v1"), "baseline.sh v1")?,
    }
    // The setup's last reload must have taken effect (baseline.sh returns before it has).
    settle(&site, "v1")?;
    let load = Load::start(site.nginx_addr(), conn, opts.threads, opts.gap);
    let t0 = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let mut cycle_starts = Vec::new();
    let mut result = Ok(());
    for cycle in 0..cycles {
        let target = if cycle % 2 == 0 { "v2" } else { "v1" };
        cycle_starts.push(t0.elapsed().as_secs_f64());
        let cmd = match driver {
            Driver::Daemon(_) if target == "v2" => {
                tools.ft(&site, &["deploy", "v2", "--by", "bench"])
            }
            Driver::Daemon(_) => tools.ft(&site, &["rollback", "--yes", "--by", "bench"]),
            Driver::Baseline => tools.baseline(&site, target),
        };
        if let Err(e) = timed(&site, target, cmd, &format!("cycle {cycle} to {target}")) {
            result = Err(e);
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(Duration::from_secs(1));
    let stats = load.finish();
    if let Some(d) = daemon {
        d.stop()?;
    }
    result?;
    if served(&site)? != if cycles.is_multiple_of(2) { "v1" } else { "v2" } {
        return Err("the load run ended on the wrong version".into());
    }
    Ok((stats, cycle_starts))
}

// ---------------------------------------------------------------------------------------
// e. The nginx lab: a site's nginx in front of two stand-in apps run by the bench itself, so
// the moment the old one stops can be chosen to the millisecond.
// ---------------------------------------------------------------------------------------

/// A stand-in for a container: answers `/version` with its name and `/slow` after 2 s;
/// `stop` closes the port and cuts every open connection, as a container's exit does.
struct FakeApp {
    name: &'static str,
    port: u16,
    running: Arc<AtomicBool>,
    /// Open connections by number; each serving thread removes its own when it ends.
    conns: Arc<Mutex<BTreeMap<u64, TcpStream>>>,
    accept: Option<thread::JoinHandle<()>>,
}

impl FakeApp {
    fn new(name: &'static str, port: u16) -> FakeApp {
        FakeApp {
            name,
            port,
            running: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(BTreeMap::new())),
            accept: None,
        }
    }

    fn start(&mut self) -> Result<()> {
        if self.accept.is_some() {
            return Ok(());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("port {}: {e}", self.port))
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        };
        self.running.store(true, Ordering::SeqCst);
        let (running, conns, name) = (
            Arc::clone(&self.running),
            Arc::clone(&self.conns),
            self.name,
        );
        self.accept = Some(thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                if !running.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let id = n as u64;
                if let Ok(clone) = stream.try_clone() {
                    conns.lock().unwrap().insert(id, clone);
                }
                let conns = Arc::clone(&conns);
                thread::spawn(move || {
                    fake_serve(stream, name);
                    conns.lock().unwrap().remove(&id);
                });
            }
        }));
        Ok(())
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.running.store(false, Ordering::SeqCst);
        // Wake the accept loop so it drops the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        let _ = accept.join();
        for c in std::mem::take(&mut *self.conns.lock().unwrap()).into_values() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FakeApp {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fake_serve(stream: TcpStream, name: &str) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut stream = stream;
    loop {
        let mut request = String::new();
        match reader.read_line(&mut request) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            match reader.read_line(&mut header) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let h = header.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            close |= h == "connection: close";
        }
        if request.split_whitespace().nth(1) == Some("/slow") {
            thread::sleep(Duration::from_secs(2));
        }
        let body = format!("{name}\n");
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if stream.write_all(answer.as_bytes()).is_err() || close {
            return;
        }
    }
}

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

/// The child processes of `parent`, from /proc.
fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn nginx_lab(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
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
            if conn == Conn::KeepAlive {
                stats.retried.to_string()
            } else {
                "-".into()
            },
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

// ---------------------------------------------------------------------------------------
// f. Canary (issue 14): how many requests reach a bad image, blue/green against a canary.
// ---------------------------------------------------------------------------------------

/// The bad images of section f. `flaky`: its `/health` answers 500 from 3 s after it
/// starts, its `/version` keeps answering 200, so health probes catch it and real requests
/// do not. `err5`: `/health` always fine, every 5th other request answers 500, so only real
/// requests catch it.
const BAD: [&str; 2] = ["flaky", "err5"];
/// The version every run of section f starts from and goes back to.
const STABLE: &str = "v1";
/// The canary's one step, and its bounds.
const CANARY_WEIGHT: u32 = 10;
const CANARY_PAUSE: &str = "20s";
const CANARY_MIN_REQUESTS: u32 = 50;
const CANARY_MAX_ERROR_RATE: &str = "0.01";
/// Both strategies' drain.
const CANARY_BENCH_DRAIN: &str = "10s";

/// How a bad image is deployed in section f.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Strategy {
    /// Straight to 100% after the health gate, rollout.auto_rollback watching the drain.
    BlueGreen,
    /// One canary step at [`CANARY_WEIGHT`]%, then the full switch.
    Canary,
}

impl Strategy {
    fn name(self) -> String {
        match self {
            Strategy::BlueGreen => {
                format!("blue/green, auto-rollback, drain {CANARY_BENCH_DRAIN}")
            }
            Strategy::Canary => format!(
                "canary, 1 step {CANARY_WEIGHT}% (pause {CANARY_PAUSE}, min_requests {CANARY_MIN_REQUESTS}, max_error_rate {CANARY_MAX_ERROR_RATE})"
            ),
        }
    }
}

/// One deployment of a bad image under load, counted over the window that starts at the
/// switch (the first change of the upstream file).
#[derive(Debug, Clone)]
struct BadRun {
    /// Requests sent in the window that an image answered.
    requests: u64,
    /// Of those, answered by the bad image.
    reached: u64,
    /// Of those, not 2xx.
    reached_failed: u64,
    /// Requests of the whole load run that failed without any image's answer (connection
    /// errors, nginx's own 5xx).
    other_failed: u64,
    /// From the switch to the last request the bad image answered; None when it still
    /// answered in the window's last second (it stays live).
    back_after: Option<f64>,
    /// From the switch until `fieldtrack deploy` exited, and its exit code.
    exited_after: f64,
    exit: Option<i32>,
}

/// The two sites of section f, each with its daemon, serving [`STABLE`].
struct CanaryRig<'a> {
    site: Site,
    daemon: Daemon,
    strategy: Strategy,
    tools: &'a Tools<'a>,
}

impl<'a> CanaryRig<'a> {
    fn new(tools: &'a Tools<'a>, strategy: Strategy) -> Result<CanaryRig<'a>> {
        let mut site = tools.site(CANARY_BENCH_DRAIN)?;
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
        // The first deployment has no stable color, so no canary step either.
        tools.setup(
            tools.ft(&site, &["deploy", STABLE, "--by", "bench"]),
            &format!("fieldtrack deploy {STABLE}"),
        )?;
        let daemon = Daemon::start(tools, &site)?;
        daemon.wait_converged(&site, STABLE)?;
        Ok(CanaryRig {
            site,
            daemon,
            strategy,
            tools,
        })
    }

    /// Deploys `bad` through the daemon under load and counts until `window` after the
    /// switch and the deploy's exit, whichever is later; then puts the site back on
    /// [`STABLE`] (by hand where nothing rolled back).
    fn run(&self, opts: &Opts, bad: &str, run: usize) -> Result<BadRun> {
        let (site, tools) = (&self.site, self.tools);
        settle(site, STABLE)?;
        let before = fs::read_to_string(&site.upstream_file).map_err(|e| e.to_string())?;
        let load = Load::start(site.nginx_addr(), Conn::Close, opts.threads, opts.gap);
        thread::sleep(Duration::from_secs(1));
        let note = format!("bench run {}", run + 1);
        let mut child = tools
            .ft(site, &["deploy", bad, "--by", "bench", "--note", &note])
            .spawn()
            .map_err(|e| format!("cannot start fieldtrack deploy {bad}: {e}"))?;
        let window = opts.canary_window.as_secs_f64();
        let mut switch: Option<f64> = None;
        let mut exit: Option<(f64, Option<i32>)> = None;
        let outcome = loop {
            let now = load.t0.elapsed().as_secs_f64();
            if switch.is_none()
                && fs::read_to_string(&site.upstream_file).is_ok_and(|t| t != before)
            {
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
                    site.dir.join("bench.log").display()
                ))
                }
                _ => {}
            }
            if now > window + COMMAND_LIMIT.as_secs_f64() {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("fieldtrack deploy {bad} did not end"));
            }
            thread::sleep(POLL);
        };
        let stats = load.finish();
        outcome?;
        let (switch, (exited_at, code)) = (switch.unwrap_or_default(), exit.unwrap_or_default());
        let end = switch + window;
        let in_window = |t: f32| (switch..end).contains(&f64::from(t));
        let requests = stats
            .by_tag
            .values()
            .flatten()
            .filter(|(t, _)| in_window(*t))
            .count() as u64;
        let reached: Vec<(f32, bool)> = stats
            .by_tag
            .get(bad)
            .map(|a| a.iter().copied().filter(|(t, _)| in_window(*t)).collect())
            .unwrap_or_default();
        let tagged_failed: u64 = stats
            .by_tag
            .values()
            .flatten()
            .filter(|(_, ok)| !ok)
            .count() as u64;
        let last = reached
            .iter()
            .map(|(t, _)| f64::from(*t))
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.max(t))));
        let result = BadRun {
            requests,
            reached: reached.len() as u64,
            reached_failed: reached.iter().filter(|(_, ok)| !ok).count() as u64,
            other_failed: stats.failed().saturating_sub(tagged_failed),
            back_after: last.filter(|t| *t < end - 1.0).map(|t| t - switch),
            exited_after: exited_at - switch,
            exit: code,
        };
        eprintln!(
            "bench:   {bad}, {:?}, run {}: {result:?}",
            self.strategy,
            run + 1
        );
        // Back to the stable version: an auto-rollback or an aborted canary wrote it into
        // the desired file already; a bad image that stayed live is replaced by hand.
        if desired_image(site).as_deref() != Some(STABLE) {
            tools.setup(
                tools.ft(
                    site,
                    &["deploy", STABLE, "--by", "bench", "--note", "bench: back"],
                ),
                &format!("fieldtrack deploy {STABLE}"),
            )?;
        }
        self.daemon.wait_converged(site, STABLE)?;
        Ok(result)
    }
}

fn canary_bench(tools: &Tools, opts: &Opts, report: &mut Report) -> Result<()> {
    eprintln!(
        "bench: f. canary: requests that reach a bad image ({} runs, {} s windows)",
        opts.runs,
        opts.canary_window.as_secs()
    );
    for tag in BAD.iter().chain(&[STABLE]) {
        util::run(
            tools
                .bed
                .docker()
                .args(["pull", "-q", &tools.bed.image(tag)]),
        )
        .map_err(|e| e.to_string())?;
    }
    let rigs = [
        CanaryRig::new(tools, Strategy::BlueGreen)?,
        CanaryRig::new(tools, Strategy::Canary)?,
    ];
    // (bad image, strategy) -> the runs; interleaved run by run, as the machine is shared.
    let mut runs: BTreeMap<(usize, usize), Vec<BadRun>> = BTreeMap::new();
    for run in 0..opts.runs {
        for (b, bad) in BAD.iter().enumerate() {
            for (r, rig) in rigs.iter().enumerate() {
                runs.entry((b, r))
                    .or_default()
                    .push(rig.run(opts, bad, run)?);
            }
        }
        eprintln!("bench:   run {}/{} done", run + 1, opts.runs);
    }
    let window = opts.canary_window.as_secs();
    let mut s = Section::new(
        &format!(
            "f. Canary (issue 14): a bad image deployed under load, {window} s from the switch"
        ),
        &[
            "bad image",
            "strategy",
            "requests",
            "answered by the bad image",
            "of those failed",
            "failed otherwise",
            "switch → back on stable",
            "deploy exits after (code)",
        ],
    );
    for ((b, r), runs) in &runs {
        let count = |f: fn(&BadRun) -> u64| counts(runs.iter().map(f).collect());
        let stayed = runs.iter().filter(|x| x.back_after.is_none()).count();
        let mut back = Sample::default();
        for x in runs {
            if let Some(t) = x.back_after {
                back.push(Duration::from_secs_f64(t));
            }
        }
        let back = match stayed {
            0 => back.show(),
            n if n == runs.len() => format!("never: stays live ({window} s counted)"),
            n => format!("{} ({n} of {} runs stayed live)", back.show(), runs.len()),
        };
        let mut exited = Sample::default();
        for x in runs {
            exited.push(Duration::from_secs_f64(x.exited_after.max(0.0)));
        }
        let codes: Vec<String> = runs
            .iter()
            .map(|x| x.exit.map_or("signal".into(), |c| c.to_string()))
            .collect();
        s.row(vec![
            BAD[*b].into(),
            rigs[*r].strategy.name(),
            count(|x| x.requests),
            count(|x| x.reached),
            count(|x| x.reached_failed),
            count(|x| x.other_failed),
            back,
            format!("{} ({})", exited.show(), codes.join(", ")),
        ]);
    }
    for (b, bad) in BAD.iter().enumerate() {
        let median = |r: usize, f: fn(&BadRun) -> u64| {
            let mut v: Vec<u64> = runs
                .get(&(b, r))
                .map_or(Vec::new(), |x| x.iter().map(f).collect());
            v.sort_unstable();
            v.get(v.len() / 2).copied().unwrap_or(0)
        };
        let (bg, ca) = (median(0, |x| x.reached), median(1, |x| x.reached));
        let (bg_failed, ca_failed) = (
            median(0, |x| x.reached_failed),
            median(1, |x| x.reached_failed),
        );
        s.notes.push(format!(
            "{bad}, in the {window} s window: with the canary {ca} requests reached it ({ca_failed} failed), with blue/green {bg} ({bg_failed} failed): {:.1}% of the requests{} (medians).",
            100.0 * ca as f64 / bg.max(1) as f64,
            if bg_failed > 0 {
                format!(", {:.1}% of the failures", 100.0 * ca_failed as f64 / bg_failed as f64)
            } else {
                String::new()
            }
        ));
    }
    s.notes.push(format!(
        "Each run: the site serves {STABLE} through its daemon; the load generator of section c ({} threads, new connection per request, {} ms between a thread's requests) starts; 1 s later `fieldtrack deploy BAD` (through the daemon). The switch is the first change of the upstream file (100% for blue/green, the 10% step for the canary); the window is the {window} s after it. requests: sent in the window and answered by an app; answered by the bad image: its `X-Testapp-Tag` header named it; failed: not 2xx; failed otherwise: the whole load run's requests that no app answered (connection errors, nginx's own 5xx). switch → back on stable: until the last request the bad image answered (\"stays live\" when it still answered in the window's last second). Medians (min-max) of {} runs, interleaved.",
        opts.threads,
        opts.gap.as_millis(),
        opts.runs
    ));
    s.notes.push("flaky: `/health` answers 500 from 3 s after its start, `/version` keeps answering 200: health probes (3 failed in a row, 1 s apart, during the drain or the canary step) catch it, and no real request fails; what differs is how many reached it. err5: `/health` always answers 200 and every 5th other request 500: **blue/green's probes never see it, so it stays live** (its failures are counted over the window, then the bench deploys v1 by hand); the canary's judge reads nginx's access log each second and aborts the step once the canary's errors exceed max_error_rate of min_requests.".into());
    report.sections.push(s);
    Ok(())
}

/// `12 (10-15)`: the median and range of counts.
fn counts(mut v: Vec<u64>) -> String {
    v.sort_unstable();
    match v.len() {
        0 => "-".into(),
        1 => v[0].to_string(),
        n => {
            let median = if n % 2 == 1 {
                v[n / 2].to_string()
            } else {
                format!("{:.0}", (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0)
            };
            format!("{median} ({}-{})", v[0], v[n - 1])
        }
    }
}
