//! A site: one test's own world. A folder, an nginx under a private prefix on a free loopback
//! port, the upstream include file it reads, a `fieldtrack.toml` pointing at all of it, and a
//! unique app name (so unique container names) with its own free color ports.
//!
//! Its nginx logs every request in fieldtrack's JSON `log_format` ([`LOG_FORMAT`]) to
//! [`Site::access_log`], which the config names as `nginx.access_log`: a canary on a site is
//! judged from real traffic, as on a server set up by `fieldtrack init`.
//!
//! Dropping a site stops its nginx (by pid) and removes its containers, also when the test
//! failed. A site whose test process died without dropping it is swept by the next
//! [`crate::Bed::up`].

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::{self, err, BedError, Result};
use crate::Bed;

/// fieldtrack's `log_format`, as `fieldtrack::observe::access_log::LOG_FORMAT` has it: the
/// bed cannot depend on fieldtrack (fieldtrack's tests depend on the bed), so this is a
/// copy, and `tests/integration/canary_setup.rs` holds the two equal.
pub const LOG_FORMAT: &str = r#"log_format fieldtrack escape=json '{"time":"$time_iso8601","upstream_addr":"$upstream_addr","status":"$status","upstream_status":"$upstream_status","request_time":"$request_time","upstream_response_time":"$upstream_response_time"}';"#;

/// Where a site's nginx, run under `prefix`, writes its access log in [`LOG_FORMAT`].
pub(crate) fn access_log_path(prefix: &Path) -> PathBuf {
    prefix.join("logs/access.log")
}

/// How a site is made.
#[derive(Debug, Clone, Default)]
pub struct SiteOptions {
    /// Survive the process that made it (the demo); removed by `testbed site down`.
    pub keep: bool,
    /// App name; default a unique `t…` name.
    pub app: Option<String>,
    /// `rollout.promotion = "manual"`, and nginx gets a second server, on
    /// [`Site::preview_port`], proxying to the upstream file's `{upstream_name}_preview`
    /// block, as `fieldtrack init`'s snippet shows an operator.
    pub preview: bool,
}

/// One test's site. See the module docs.
#[derive(Debug)]
pub struct Site {
    pub dir: PathBuf,
    pub app: String,
    pub nginx_port: u16,
    pub blue_port: u16,
    pub green_port: u16,
    /// The loopback port of nginx's preview server, with [`SiteOptions::preview`].
    pub preview_port: Option<u16>,
    pub config_path: PathBuf,
    pub desired_file: PathBuf,
    pub history_file: PathBuf,
    pub state_dir: PathBuf,
    pub upstream_file: PathBuf,
    pub upstream_name: String,
    pub repository: String,
    docker_host: String,
    nginx: PathBuf,
    keep: bool,
    /// A repository made for this site alone, whose local images go with it.
    own_repository: Option<String>,
    config: ConfigValues,
}

/// A site's `fieldtrack.toml` as values: section -> key -> TOML literal; section "" is the
/// top level. Shared with [`crate::SwarmSite`].
#[derive(Debug, Default, Clone)]
pub(crate) struct ConfigValues(BTreeMap<String, BTreeMap<String, String>>);

impl ConfigValues {
    /// Sets a dotted key (`health.interval`) to a TOML literal.
    pub(crate) fn set(&mut self, key: &str, literal: String) {
        let (section, name) = key.rsplit_once('.').unwrap_or(("", key));
        self.0
            .entry(section.to_string())
            .or_default()
            .insert(name.to_string(), literal);
    }

    /// The `fieldtrack.toml` text.
    pub(crate) fn text(&self) -> String {
        let mut text = String::from("# written by the fieldtrack test bed\n");
        for (section, values) in &self.0 {
            if !section.is_empty() {
                text.push_str(&format!("\n[{section}]\n"));
            }
            for (key, value) in values {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text
    }
}

impl Site {
    /// A new site on the shared bed.
    pub fn new() -> Site {
        Site::create(Bed::shared(), SiteOptions::default())
            .unwrap_or_else(|e| panic!("cannot set up a test site: {e}"))
    }

    /// A new site whose promotion is manual, with a preview server in its nginx (see
    /// [`SiteOptions::preview`]).
    pub fn with_preview() -> Site {
        let options = SiteOptions {
            preview: true,
            ..SiteOptions::default()
        };
        Site::create(Bed::shared(), options)
            .unwrap_or_else(|e| panic!("cannot set up a test site: {e}"))
    }

    /// A new site whose repository is one of its own in the bed's private registry (which
    /// wants a login), holding `v1` and `v2`, pulled by nobody yet. Fieldtrack finds no
    /// credentials for it unless a test gives them (`DOCKER_CONFIG`, see
    /// [`Bed::write_private_login`]).
    pub fn private() -> Site {
        let bed = Bed::shared();
        let mut site = Site::new();
        let repository = bed
            .push_private(&site.app)
            .unwrap_or_else(|e| panic!("cannot push to the private registry: {e}"));
        site.set("repository", &quote(&repository));
        site.repository = repository;
        site.own_repository = Some(site.repository.clone());
        site
    }

    pub fn create(bed: &Bed, options: SiteOptions) -> Result<Site> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let app = options
            .app
            .clone()
            .unwrap_or_else(|| format!("t{:x}{n:x}{:04x}", std::process::id(), nanos % 0xffff));
        let dir = bed.dir.join("sites").join(&app);
        if dir.exists() {
            return err(format!("site folder {} already exists", dir.display()));
        }
        fs::create_dir_all(dir.join("nginx/logs"))
            .map_err(|e| BedError(format!("cannot create {}: {e}", dir.display())))?;
        if !options.keep {
            write(&dir.join("owner.pid"), &std::process::id().to_string())?;
        }
        let ports = util::free_ports(if options.preview { 4 } else { 3 })?;
        let upstream_name = format!("fieldtrack_{}", app.replace(['-', '.'], "_"));
        let mut site = Site {
            config_path: dir.join("fieldtrack.toml"),
            desired_file: dir.join("desired.toml"),
            history_file: dir.join(".deploy_history"),
            state_dir: dir.join(".fieldtrack"),
            upstream_file: dir.join("nginx/upstream.conf"),
            upstream_name,
            repository: bed.repository.clone(),
            docker_host: bed.docker_host.clone(),
            nginx: bed.nginx.clone(),
            keep: options.keep,
            own_repository: None,
            nginx_port: ports[0],
            blue_port: ports[1],
            green_port: ports[2],
            preview_port: ports.get(3).copied(),
            dir,
            app,
            config: ConfigValues::default(),
        };
        site.default_config();
        if site.preview_port.is_some() {
            site.set_value("rollout.promotion", quote("manual"));
        }
        site.write_config()?;
        site.start_nginx()?;
        Ok(site)
    }

    fn default_config(&mut self) {
        let prefix = self.dir.join("nginx");
        for (key, value) in common_config(
            &self.nginx,
            &prefix,
            &self.app,
            &self.repository,
            &self.upstream_file,
            &self.upstream_name,
        ) {
            self.set_value(key, value);
        }
        let values: Vec<(&str, String)> = vec![
            ("container.blue_port", self.blue_port.to_string()),
            ("container.green_port", self.green_port.to_string()),
            ("docker.host", quote(&self.docker_host)),
        ];
        for (key, value) in values {
            self.set_value(key, value);
        }
    }

    fn set_value(&mut self, key: &str, literal: String) {
        self.config.set(key, literal);
    }

    /// Sets a config key (dotted, e.g. `health.interval`) to a TOML literal and rewrites
    /// `fieldtrack.toml`: `site.set("health.interval", "\"200ms\"")`.
    pub fn set(&mut self, key: &str, literal: &str) {
        self.set_value(key, literal.to_string());
        self.write_config()
            .unwrap_or_else(|e| panic!("cannot write the site config: {e}"));
    }

    /// The current `fieldtrack.toml` text.
    pub fn config_text(&self) -> String {
        self.config.text()
    }

    fn write_config(&self) -> Result<()> {
        write(&self.config_path, &self.config_text())
    }

    fn start_nginx(&self) -> Result<()> {
        let prefix = self.dir.join("nginx");
        // Before the first deployment the block may point anywhere: here, at blue (and so
        // may the preview block, which the preview server needs).
        let mut upstream = format!(
            "upstream {} {{\n    server 127.0.0.1:{};\n}}\n",
            self.upstream_name, self.blue_port
        );
        if self.preview_port.is_some() {
            upstream.push_str(&format!(
                "upstream {}_preview {{\n    server 127.0.0.1:{};\n}}\n",
                self.upstream_name, self.blue_port
            ));
        }
        write(&self.upstream_file, &upstream)?;
        let conf = nginx_conf_with(
            &prefix,
            &self.upstream_file,
            self.nginx_addr(),
            &self.upstream_name,
            self.preview_addr(),
        );
        fs::create_dir_all(prefix.join("tmp"))
            .map_err(|e| BedError(format!("cannot create {}: {e}", prefix.display())))?;
        write(&prefix.join("nginx.conf"), &conf)?;
        util::run(
            Command::new(&self.nginx)
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(prefix.join("nginx.conf"))
                .arg("-e")
                .arg(prefix.join("logs/error.log")),
        )?;
        let addr = self.nginx_addr();
        if !util::wait_until(Duration::from_secs(10), || {
            std::net::TcpStream::connect(addr).is_ok()
        }) {
            return err(format!(
                "nginx for site {} does not listen on {addr}; {}",
                self.app,
                util::tail_file(&prefix.join("logs/error.log"), 10)
            ));
        }
        Ok(())
    }

    pub fn nginx_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nginx_port))
    }

    /// Where nginx's preview server listens, with [`SiteOptions::preview`].
    pub fn preview_addr(&self) -> Option<SocketAddr> {
        self.preview_port
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// GET through nginx's preview server: (status, body).
    pub fn get_preview(&self, path: &str) -> std::io::Result<(u16, String)> {
        let addr = self.preview_addr().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the site has no preview server",
            )
        })?;
        util::http_get(addr, path, Duration::from_secs(5))
    }

    /// What the previewed version (or, with no preview running, the live one) answers
    /// through the preview server on `/version`, trimmed.
    pub fn preview_version(&self) -> Option<String> {
        match self.get_preview("/version") {
            Ok((200, body)) => Some(body.trim().to_string()),
            _ => None,
        }
    }

    /// nginx's access log, one JSON object a request in [`LOG_FORMAT`]; the config's
    /// `nginx.access_log`.
    pub fn access_log(&self) -> PathBuf {
        access_log_path(&self.dir.join("nginx"))
    }

    /// GET through the site's nginx: (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        util::http_get(self.nginx_addr(), path, Duration::from_secs(5))
    }

    /// What the live version answers through nginx on `/version`, trimmed.
    pub fn served_version(&self) -> Option<String> {
        match self.get("/version") {
            Ok((200, body)) => Some(body.trim().to_string()),
            _ => None,
        }
    }

    /// The full reference of a test image.
    pub fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.repository)
    }

    /// A `docker` command aimed at the bed's engine.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.docker_host);
        cmd
    }

    /// Names of this site's containers (running or not), sorted.
    pub fn containers(&self) -> Vec<String> {
        let out = util::run(self.docker().args([
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("label=fieldtrack.app={}", self.app),
        ]))
        .unwrap_or_default();
        let mut names: Vec<String> = out.lines().map(str::to_string).collect();
        names.sort();
        names
    }

    /// Reads a file of the site, empty when missing.
    pub fn read(&self, path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    /// Stops nginx, removes the containers and the folder.
    pub fn teardown(&self) {
        teardown_dir(&self.dir, &self.app, &self.docker_host);
        if let Some(repository) = &self.own_repository {
            // By id: an image pulled by digest has no tag to remove it by.
            let ids =
                util::run(self.docker().args(["images", "-q", repository])).unwrap_or_default();
            let ids: Vec<&str> = ids.lines().collect();
            if !ids.is_empty() {
                let _ = util::run(self.docker().args(["rmi", "-f"]).args(&ids));
            }
        }
    }
}

impl Default for Site {
    fn default() -> Self {
        Site::new()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}

fn teardown_dir(dir: &Path, app: &str, docker_host: &str) {
    if let Some(pid) = util::read_pid(&dir.join("nginx/nginx.pid")) {
        util::stop_pid(pid, libc::SIGQUIT, Duration::from_secs(5));
    }
    let docker = || {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", docker_host);
        cmd
    };
    let listed = util::run(docker().args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=fieldtrack.app={app}"),
    ]))
    .unwrap_or_default();
    let mut ids: Vec<String> = listed.lines().map(str::to_string).collect();
    // Containers named after the site but unlabelled (a half-made create) go too.
    for color in ["blue", "green"] {
        ids.push(format!("{app}-{color}"));
    }
    let _ = util::run(docker().args(["rm", "-f"]).args(&ids));
    if std::env::var_os("FIELDTRACK_KEEP_SITES").is_none() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Tears down the sites whose test process is gone (kept sites stay).
pub(crate) fn sweep(bed: &Bed) {
    let Ok(entries) = fs::read_dir(bed.dir.join("sites")) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let owner = dir.join("owner.pid");
        if !owner.exists() {
            continue;
        }
        if util::read_pid(&owner).is_some_and(util::pid_alive) {
            continue;
        }
        if let Some(app) = dir.file_name().and_then(|n| n.to_str()) {
            teardown_dir(&dir, app, &bed.docker_host);
        }
    }
}

/// Tears down every site, kept ones included (`testbed down`).
pub(crate) fn sweep_all(dir: &Path, docker_host: &str) {
    let Ok(entries) = fs::read_dir(dir.join("sites")) else {
        return;
    };
    for entry in entries.flatten() {
        let site = entry.path();
        if let Some(app) = site.file_name().and_then(|n| n.to_str()) {
            teardown_dir(&site, app, docker_host);
        }
    }
}

/// Tears down a kept site by its folder (`testbed site down DIR`).
pub fn teardown_site_dir(bed: &Bed, dir: &Path) {
    if let Some(app) = dir.file_name().and_then(|n| n.to_str()) {
        teardown_dir(dir, app, &bed.docker_host);
    }
}

/// The config values every site has, whatever runs its app: names, fast health settings,
/// the nginx files and commands (nginx under `prefix`).
pub(crate) fn common_config(
    nginx: &Path,
    prefix: &Path,
    app: &str,
    repository: &str,
    upstream_file: &Path,
    upstream_name: &str,
) -> Vec<(&'static str, String)> {
    let nginx_args = |tail: &[&str]| {
        let mut args = vec![
            nginx.display().to_string(),
            "-p".to_string(),
            prefix.display().to_string(),
            "-c".to_string(),
            prefix.join("nginx.conf").display().to_string(),
            "-e".to_string(),
            prefix.join("logs/error.log").display().to_string(),
        ];
        args.extend(tail.iter().map(|s| s.to_string()));
        toml_array(&args)
    };
    vec![
        ("app", quote(app)),
        ("repository", quote(repository)),
        ("container.stop_timeout", quote("2s")),
        ("health.interval", quote("1s")),
        ("health.attempts", "10".to_string()),
        ("health.timeout", quote("1s")),
        (
            "nginx.upstream_file",
            quote(&upstream_file.display().to_string()),
        ),
        ("nginx.upstream_name", quote(upstream_name)),
        (
            "nginx.access_log",
            quote(&access_log_path(prefix).display().to_string()),
        ),
        ("nginx.test_command", nginx_args(&["-t", "-q"])),
        ("nginx.reload_command", nginx_args(&["-s", "reload"])),
        (
            "nginx.pid_file",
            quote(&prefix.join("nginx.pid").display().to_string()),
        ),
        ("rollout.drain", quote("1s")),
        // Sites share one registry repository: retention in one would remove images
        // another test is about to run. The retention test turns it on in its own repository.
        ("rollout.keep_images", "false".to_string()),
    ]
}

/// The nginx config of a site: run as `nginx -p PREFIX -c nginx.conf`, listening on
/// `listen`, proxying everything to the upstream block in `upstream_file`, logging every
/// request in [`LOG_FORMAT`].
pub(crate) fn nginx_conf(
    prefix: &Path,
    upstream_file: &Path,
    listen: SocketAddr,
    upstream_name: &str,
) -> String {
    nginx_conf_with(prefix, upstream_file, listen, upstream_name, None)
}

/// As [`nginx_conf`], with a second server on `preview` (when given) proxying to the
/// `{upstream_name}_preview` block.
fn nginx_conf_with(
    prefix: &Path,
    upstream_file: &Path,
    listen: SocketAddr,
    upstream_name: &str,
    preview: Option<SocketAddr>,
) -> String {
    let preview = preview
        .map(|addr| {
            format!(
                r#"    server {{
        listen {addr};
        location / {{
            proxy_pass http://{upstream_name}_preview;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
        }}
    }}
"#
            )
        })
        .unwrap_or_default();
    format!(
        r#"# nginx for one fieldtrack test site, run as: nginx -p {prefix} -c nginx.conf
worker_processes 1;
# Old workers finish their requests after a reload for at most this long.
worker_shutdown_timeout 10s;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
    {log_format}
    access_log {access_log} fieldtrack;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {upstream};
    server {{
        listen {listen};
        location / {{
            proxy_pass http://{upstream_name};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 2s;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
{preview}}}
"#,
        prefix = prefix.display(),
        upstream = upstream_file.display(),
        log_format = LOG_FORMAT,
        access_log = access_log_path(prefix).display(),
    )
}

pub(crate) fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).map_err(|e| BedError(format!("cannot write {}: {e}", path.display())))
}

pub(crate) fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}
