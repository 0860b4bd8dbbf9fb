//! The tools every section drives: fieldtrack and `bench/baseline.sh` aimed at a site, new
//! sites with the bench's settings, and child processes run to their end.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use fieldtrack_testbed::{Bed, Site, SiteOptions};

use crate::docker::Engine;
use crate::opts::Opts;
use crate::Result;

/// What the sections run against: the bed, the binaries measured, the `--set` overrides.
pub struct Tools<'a> {
    pub bed: &'a Bed,
    pub docker: &'a Engine,
    fieldtrack: PathBuf,
    baseline: PathBuf,
    sets: Vec<(String, String)>,
    pub verbose: bool,
}

impl<'a> Tools<'a> {
    pub fn new(opts: &Opts, bed: &'a Bed, docker: &'a Engine) -> Tools<'a> {
        Tools {
            bed,
            docker,
            fieldtrack: opts.fieldtrack.clone(),
            baseline: opts.baseline.clone(),
            sets: opts.sets.clone(),
            verbose: opts.verbose,
        }
    }

    /// A new site with production-like settings fit for the bench.
    pub fn site(&self, drain: &str) -> Result<Site> {
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
    pub fn ft(&self, site: &Site, args: &[&str]) -> Command {
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

    /// `fieldtrack deploy TAG --by bench`, to be run.
    pub fn deploy(&self, site: &Site, tag: &str) -> Command {
        self.ft(site, &["deploy", tag, "--by", "bench"])
    }

    /// Deploys `tag` (in-process, or through the site's daemon) to its end, untimed.
    pub fn deploy_untimed(&self, site: &Site, tag: &str) -> Result<()> {
        self.setup(self.deploy(site, tag), &format!("fieldtrack deploy {tag}"))
    }

    /// `bench/baseline.sh` deploying `tag` on the site, configured through the environment.
    pub fn baseline(&self, site: &Site, tag: &str) -> Command {
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
    pub fn setup(&self, mut cmd: Command, what: &str) -> Result<()> {
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

pub fn wait_child(child: &mut Child, limit: Duration, what: &str) -> Result<ExitStatus> {
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

/// The image the site's desired file names now.
pub fn desired_image(site: &Site) -> Option<String> {
    let text = fs::read_to_string(&site.desired_file).ok()?;
    text.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        (key.trim() == "image").then(|| value.trim().trim_matches('"').to_string())
    })
}
