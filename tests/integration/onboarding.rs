//! A newcomer's first minutes, on the real test bed: `fieldtrack init` into an empty folder,
//! `fieldtrack check`, then real deployments through the nginx snippets `init` generated,
//! served by an nginx under a private prefix. Also: `init` never overwrites anything, and
//! `check` reports each failure it claims to detect, broken one at a time.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::{fieldtrack_in, wait_until, Run};
use fieldtrack::observe::access_log::{parse_line, Request, LOG_FORMAT};
use fieldtrack_testbed::util::{free_ports, http_get, read_pid, stop_pid};
use fieldtrack_testbed::Bed;

/// Reading what `check` printed.
impl Run {
    /// The `check` line about `subject`, e.g. `OK    docker      engine at ...`.
    #[track_caller]
    fn line(&self, subject: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| {
                l.get(6..)
                    .is_some_and(|rest| rest.starts_with(&format!("{subject} ")))
            })
            .unwrap_or_else(|| panic!("no `{subject}` line in:\n{}", self.stdout))
    }

    /// The level (`OK`, `WARN`, `FAIL`) of the `check` line about `subject`.
    #[track_caller]
    fn level(&self, subject: &str) -> &str {
        self.line(subject).split_whitespace().next().unwrap_or("")
    }
}

/// `fieldtrack ARGS` with nothing inherited that could steer it.
fn fieldtrack(args: &[&str], cwd: &Path, docker_config: &Path) -> Run {
    Run::of(
        fieldtrack_in(cwd)
            .args(args)
            .env_remove("DOCKER_HOST")
            .env("DOCKER_CONFIG", docker_config),
    )
}

/// A folder set up by `fieldtrack init` (on free ports), adapted only where a test bed
/// differs from a server (the bed's engine and nginx binary, shorter timings), with an nginx
/// under the private prefix `dir/nginx` that includes the generated snippets.
///
/// Laid out like a bed site (`sites/APP`, `owner.pid`, `nginx/nginx.pid`), so that the
/// next `Bed::up` sweeps it if this test process dies without dropping it.
struct Onboarded {
    bed: &'static Bed,
    dir: PathBuf,
    app: String,
    config: PathBuf,
    prefix: PathBuf,
    upstream: PathBuf,
    nginx_port: u16,
    blue_port: u16,
    green_port: u16,
    /// An empty Docker config folder: no credentials, whatever the machine has.
    docker_config: PathBuf,
}

impl Onboarded {
    fn new() -> Onboarded {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let bed = Bed::shared();
        let app = format!(
            "o{:x}{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = bed.dir.join("sites").join(&app);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("owner.pid"), std::process::id().to_string()).unwrap();
        let docker_config = dir.join("docker-config");
        fs::create_dir_all(&docker_config).unwrap();
        let ports = free_ports(3).unwrap();
        let site = Onboarded {
            bed,
            config: dir.join("fieldtrack.toml"),
            prefix: dir.join("nginx"),
            upstream: dir.join(format!("nginx/{app}-upstream.conf")),
            dir,
            app,
            nginx_port: ports[0],
            blue_port: ports[1],
            green_port: ports[2],
            docker_config,
        };

        let dir = site.dir.display().to_string();
        let (blue, green) = (site.blue_port.to_string(), site.green_port.to_string());
        let init = site.ft(&[
            "init",
            "--app",
            &site.app,
            "--repository",
            &bed.repository,
            "--dir",
            &dir,
            "--blue-port",
            &blue,
            "--green-port",
            &green,
        ]);
        init.expect_code(0);
        assert!(init.stdout.contains("Next steps:"), "{}", init.stdout);
        site.adapt_config();
        site.write_nginx_conf(true);
        site
    }

    fn ft(&self, args: &[&str]) -> Run {
        fieldtrack(args, &self.dir, &self.docker_config)
    }

    /// `fieldtrack --config <this> ARGS`.
    fn run(&self, args: &[&str]) -> Run {
        let config = self.config.display().to_string();
        let mut all = vec!["--config", config.as_str()];
        all.extend_from_slice(args);
        self.ft(&all)
    }

    fn check(&self) -> Run {
        self.run(&["check"])
    }

    /// The generated config, with only what differs on a test bed changed (the engine, the
    /// private nginx, shorter timings). Every line replaced must be in the generated file as
    /// the example has it.
    fn adapt_config(&self) {
        let nginx = |tail: &[&str]| {
            let mut args = vec![
                self.bed.nginx.display().to_string(),
                "-p".into(),
                self.prefix.display().to_string(),
                "-c".into(),
                self.prefix.join("nginx.conf").display().to_string(),
                "-e".into(),
                self.prefix.join("logs/error.log").display().to_string(),
            ];
            args.extend(tail.iter().map(|s| s.to_string()));
            let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
            format!("[{}]", quoted.join(", "))
        };
        let replacements = [
            ("stop_timeout = \"10s\"", "stop_timeout = \"2s\"".into()),
            ("interval = \"3s\"", "interval = \"1s\"".into()),
            ("attempts = 20", "attempts = 10".into()),
            (
                "test_command = [\"nginx\", \"-t\"]",
                format!("test_command = {}", nginx(&["-t", "-q"])),
            ),
            (
                "reload_command = [\"nginx\", \"-s\", \"reload\"]",
                format!("reload_command = {}", nginx(&["-s", "reload"])),
            ),
            ("drain = \"5s\"", "drain = \"1s\"".into()),
            // The bed's repository is shared: retention here would remove images other
            // tests are about to run.
            ("keep_images = true", "keep_images = false".into()),
            (
                "# host = \"unix:///var/run/docker.sock\"",
                format!("host = {:?}", self.bed.docker_host),
            ),
        ];
        let mut text = fs::read_to_string(&self.config).unwrap();
        for (from, to) in replacements {
            assert_eq!(
                text.lines().filter(|l| *l == from).count(),
                1,
                "`{from}` once in the generated config"
            );
            text = text
                .lines()
                .map(|l| if l == from { to.as_str() } else { l })
                .collect::<Vec<_>>()
                .join("\n");
            text.push('\n');
        }
        fs::write(&self.config, text).unwrap();
    }

    /// nginx.conf under the private prefix: the generated snippets included by relative
    /// paths (resolved against the prefix), as an operator would include them.
    fn write_nginx_conf(&self, with_includes: bool) {
        let (upstream, location) = if with_includes {
            (
                format!(
                    "include {}-upstream.conf;\n    include fieldtrack-log-format.conf;",
                    self.app
                ),
                format!("include {}-location.conf;", self.app),
            )
        } else {
            (String::new(), "location / { return 204; }".to_string())
        };
        self.write_nginx_conf_with(&upstream, &location);
    }

    /// nginx.conf under the private prefix with `upstream` in the http context and
    /// `location` in the server, as given.
    fn write_nginx_conf_with(&self, upstream: &str, location: &str) {
        fs::create_dir_all(self.prefix.join("logs")).unwrap();
        fs::create_dir_all(self.prefix.join("tmp")).unwrap();
        let conf = format!(
            r#"worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    {upstream}
    server {{
        listen 127.0.0.1:{port};
        {location}
    }}
}}
"#,
            prefix = self.prefix.display(),
            port = self.nginx_port,
        );
        fs::write(self.prefix.join("nginx.conf"), conf).unwrap();
    }

    fn start_nginx(&self) {
        let status = Command::new(&self.bed.nginx)
            .arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(self.prefix.join("nginx.conf"))
            .arg("-e")
            .arg(self.prefix.join("logs/error.log"))
            .status()
            .unwrap();
        assert!(status.success(), "nginx starts");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], self.nginx_port).into();
        wait_until(
            Duration::from_secs(10),
            &format!("nginx to listen on {addr}"),
            || std::net::TcpStream::connect(addr).is_ok(),
        );
    }

    /// What the app answers on /version through nginx, None on anything but a 200.
    fn served(&self) -> Option<String> {
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], self.nginx_port).into();
        match http_get(addr, "/version", Duration::from_secs(5)) {
            Ok((200, body)) => Some(body.trim().to_string()),
            _ => None,
        }
    }

    /// Replaces the exact line `from` of the config by `to` (restored with [`Self::set_config`]).
    fn edit_config(&self, from: &str, to: &str) -> String {
        let before = fs::read_to_string(&self.config).unwrap();
        assert!(before.contains(from), "`{from}` in the config");
        fs::write(&self.config, before.replacen(from, to, 1)).unwrap();
        before
    }

    fn set_config(&self, text: &str) {
        fs::write(&self.config, text).unwrap();
    }
}

impl Drop for Onboarded {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.prefix.join("nginx.pid")) {
            stop_pid(pid, libc::SIGQUIT, Duration::from_secs(5));
        }
        let names = [format!("{}-blue", self.app), format!("{}-green", self.app)];
        let _ = self
            .bed
            .docker()
            .args(["rm", "-f"])
            .args(&names)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if std::env::var_os("FIELDTRACK_KEEP_SITES").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[test]
fn init_then_check_then_deploy_and_roll_back_through_the_generated_nginx_snippets() {
    let site = Onboarded::new();
    site.start_nginx();

    // Fresh: everything OK but the desired file (no image yet) and the registry (no login).
    let check = site.check();
    check.expect_code(0);
    for subject in [
        "config", "layout", "files", "docker", "upstream", "nginx", "site",
    ] {
        assert_eq!(check.level(subject), "OK", "{}", check.stdout);
    }
    assert_eq!(check.level("port blue"), "OK", "{}", check.stdout);
    assert_eq!(check.level("port green"), "OK", "{}", check.stdout);
    assert_eq!(check.level("desired"), "WARN", "{}", check.stdout);
    assert_eq!(check.level("registry"), "WARN", "{}", check.stdout);
    // This nginx.conf does not bound the life of old workers after a reload.
    assert_eq!(check.level("old workers"), "WARN", "{}", check.stdout);
    assert!(check.line("docker").contains("API 1."), "{}", check.stdout);
    assert!(
        check
            .line("nginx")
            .contains(&site.upstream.display().to_string()),
        "{}",
        check.stdout
    );
    assert!(
        check
            .line("upstream")
            .contains(&format!("127.0.0.1:{} (blue)", site.blue_port)),
        "the placeholder points at blue: {}",
        check.stdout
    );

    site.run(&["deploy", "v1", "--by", "newcomer"])
        .expect_code(0);
    assert_eq!(site.served().as_deref(), Some("v1"));
    // The location snippet logs in fieldtrack's format where the config says.
    let log = site.dir.join(format!("nginx/{}-access.log", site.app));
    let logged: Vec<Request> = fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(parse_line)
        .collect();
    let live = fieldtrack::nginx_conf::upstream::parse_port(
        &fs::read_to_string(&site.upstream).unwrap(),
        &format!("fieldtrack_{}", site.app),
    );
    assert!(
        logged
            .iter()
            .any(|r| r.status == 200 && r.tries.last().map(|t| t.addr.port()) == live),
        "{} (live {live:?}): {logged:?}",
        log.display()
    );

    site.run(&["deploy", "v2", "--by", "newcomer"])
        .expect_code(0);
    assert_eq!(site.served().as_deref(), Some("v2"));

    site.run(&["rollback", "--yes"]).expect_code(0);
    assert_eq!(site.served().as_deref(), Some("v1"));

    // Now the live color's port is held by the app's own container: ours, not a conflict.
    let check = site.check();
    check.expect_code(0);
    assert_eq!(check.level("desired"), "OK", "{}", check.stdout);
    let ours = [check.line("port blue"), check.line("port green")];
    assert!(
        ours.iter()
            .any(|l| l.starts_with("OK") && l.contains("is ours")),
        "{ours:?}"
    );
    assert!(ours.iter().all(|l| l.starts_with("OK")), "{ours:?}");
}

#[test]
fn check_reports_each_failure_it_claims_to_detect() {
    let site = Onboarded::new();
    // Baseline: nothing failed. nginx need not run: check runs its test command with -T.
    site.check().expect_code(0);

    // An unknown key: the config is all that can be judged, and the key is named.
    let good = fs::read_to_string(&site.config).unwrap();
    site.set_config(&format!("typo_key = 1\n{good}"));
    let run = site.check();
    run.expect_code(1);
    assert_eq!(run.level("config"), "FAIL");
    assert!(run.line("config").contains("typo_key"), "{}", run.stdout);
    site.set_config(&good);

    // The placeholder repository `init` writes without --repository.
    let repo_line = format!("repository = {:?}", site.bed.repository);
    site.edit_config(&repo_line, "repository = \"registry.example.com/api\"");
    let run = site.check();
    run.expect_code(1);
    assert!(
        run.line("config").starts_with("FAIL") && run.line("config").contains("placeholder"),
        "{}",
        run.stdout
    );
    site.set_config(&good);

    // A desired file beside the config: CI's folder would hold the config too.
    site.edit_config(
        "desired_file = \"desired/desired.toml\"",
        "desired_file = \"desired.toml\"",
    );
    let run = site.check();
    run.expect_code(0);
    assert_eq!(run.level("layout"), "WARN", "{}", run.stdout);
    assert!(
        run.line("layout").contains("the config (")
            && run.line("layout").contains("folder of its own"),
        "{}",
        run.stdout
    );
    site.set_config(&good);

    // A desired file naming another repository.
    let desired = site.dir.join("desired/desired.toml");
    let fresh = fs::read_to_string(&desired).unwrap();
    fs::write(&desired, "image = \"docker.io/library/nginx:1\"\n").unwrap();
    let run = site.check();
    run.expect_code(1);
    assert_eq!(run.level("desired"), "FAIL", "{}", run.stdout);
    assert!(run.line("desired").contains("docker.io/library/nginx"));
    fs::write(&desired, "image = \"v1\"\npaused = true\n").unwrap();
    let run = site.check();
    run.expect_code(0);
    assert_eq!(run.level("desired"), "WARN", "{}", run.stdout);
    assert!(run.line("desired").contains("paused"));
    fs::write(&desired, &fresh).unwrap();

    // Docker unreachable.
    site.edit_config(
        &format!("host = {:?}", site.bed.docker_host),
        "host = \"unix:///nonexistent/docker.sock\"",
    );
    let run = site.check();
    run.expect_code(1);
    assert_eq!(run.level("docker"), "FAIL", "{}", run.stdout);
    assert!(run.line("docker").contains("systemctl start docker"));
    site.set_config(&good);

    // Registry credentials: a helper that cannot run fails; an `auths` entry is found, and
    // neither the password nor anything of it is printed.
    let docker_config = site.docker_config.join("config.json");
    fs::write(
        &docker_config,
        r#"{"credsStore": "fieldtrack-test-no-such-helper"}"#,
    )
    .unwrap();
    let run = site.check();
    run.expect_code(1);
    assert_eq!(run.level("registry"), "FAIL", "{}", run.stdout);
    fs::write(&docker_config, "{ not json").unwrap();
    let run = site.check();
    run.expect_code(1);
    assert!(
        run.line("registry").contains("cannot read"),
        "{}",
        run.stdout
    );
    let registry = site.bed.repository.split('/').next().unwrap();
    // base64("newcomer:s3cr3t-pw")
    fs::write(
        &docker_config,
        format!(r#"{{"auths": {{"{registry}": {{"auth": "bmV3Y29tZXI6czNjcjN0LXB3"}}}}}}"#),
    )
    .unwrap();
    let run = site.check();
    run.expect_code(0);
    assert_eq!(run.level("registry"), "OK", "{}", run.stdout);
    assert!(!run.stdout.contains("s3cr3t") && !run.stdout.contains("bmV3Y29t"));
    fs::remove_file(&docker_config).unwrap();

    // The upstream file missing: nginx cannot load its include either.
    let upstream = fs::read(&site.upstream).unwrap();
    fs::remove_file(&site.upstream).unwrap();
    let run = site.check();
    run.expect_code(1);
    assert_eq!(run.level("upstream"), "FAIL", "{}", run.stdout);
    assert_eq!(run.level("nginx"), "FAIL", "{}", run.stdout);
    fs::write(&site.upstream, &upstream).unwrap();

    // nginx valid but not including the upstream file, and no site proxying to it.
    site.write_nginx_conf(false);
    let run = site.check();
    run.expect_code(1);
    assert_eq!(run.level("nginx"), "FAIL", "{}", run.stdout);
    assert!(
        run.line("nginx").contains("does not include"),
        "{}",
        run.stdout
    );
    assert_eq!(run.level("site"), "WARN", "{}", run.stdout);

    // nginx's config broken.
    fs::write(site.prefix.join("nginx.conf"), "this is not nginx;\n").unwrap();
    let run = site.check();
    run.expect_code(1);
    assert!(run.line("nginx").contains("failed"), "{}", run.stdout);
    site.write_nginx_conf(true);

    // A test command that is not nginx: check cannot tell, and says so.
    site.edit_config("test_command = [", "test_command = [\"true\"]\n# was: [");
    let run = site.check();
    run.expect_code(0);
    assert_eq!(run.level("nginx"), "WARN", "{}", run.stdout);
    site.set_config(&good);

    // A color port taken by something else.
    let squatter = TcpListener::bind(("127.0.0.1", site.blue_port)).unwrap();
    let run = site.check();
    run.expect_code(1);
    assert_eq!(run.level("port blue"), "FAIL", "{}", run.stdout);
    assert!(run.line("port blue").contains("container.blue_port"));
    assert_eq!(run.level("port green"), "OK", "{}", run.stdout);
    drop(squatter);

    site.check().expect_code(0);
}

#[test]
fn with_a_canary_check_wants_fieldtracks_log_format_and_access_log_in_nginx() {
    let site = Onboarded::new();
    let plain = fs::read_to_string(&site.config).unwrap();
    // Without [canary] nothing reads the access log, and check does not look for it.
    let run = site.check();
    run.expect_code(0);
    assert!(!run.stdout.contains("log format"), "{}", run.stdout);

    // init's snippets, as included by write_nginx_conf: everything a canary needs.
    let canary = format!("{plain}\n[canary]\nsteps = [{{ weight = 10, pause = \"1m\" }}]\n");
    site.set_config(&canary);
    let run = site.check();
    run.expect_code(0);
    for subject in ["log format", "access log", "log file"] {
        assert_eq!(run.level(subject), "OK", "{}", run.stdout);
    }
    let log = site.dir.join(format!("nginx/{}-access.log", site.app));
    assert!(
        run.line("access log").contains(&log.display().to_string()),
        "{}",
        run.stdout
    );

    // A site of the operator's own, without the format nor the access log.
    let proxy = format!(
        "location / {{ proxy_pass http://fieldtrack_{}; }}",
        site.app
    );
    let upstream = format!("include {}-upstream.conf;", site.app);
    site.write_nginx_conf_with(&upstream, &proxy);
    let run = site.check();
    run.expect_code(1);
    assert_eq!(run.level("nginx"), "OK", "nginx -t passes: {}", run.stdout);
    assert_eq!(run.level("log format"), "FAIL", "{}", run.stdout);
    assert!(
        run.line("log format").contains(LOG_FORMAT),
        "the line to add: {}",
        run.stdout
    );
    assert_eq!(run.level("access log"), "FAIL", "{}", run.stdout);
    assert!(
        run.line("access log")
            .contains(&format!("access_log {} fieldtrack;", log.display())),
        "{}",
        run.stdout
    );

    // The format declared, but the site logs in nginx's own format.
    let combined = format!(
        "location / {{ proxy_pass http://fieldtrack_{}; access_log {}; }}",
        site.app,
        log.display()
    );
    site.write_nginx_conf_with(
        &format!("{upstream}\n    include fieldtrack-log-format.conf;"),
        &combined,
    );
    let run = site.check();
    run.expect_code(1);
    assert_eq!(run.level("log format"), "OK", "{}", run.stdout);
    assert_eq!(run.level("access log"), "FAIL", "{}", run.stdout);
    assert!(
        run.line("access log").contains("combined"),
        "{}",
        run.stdout
    );
    site.write_nginx_conf(true);
    site.check().expect_code(0);

    // nginx.access_log in a folder that does not exist.
    let moved = canary.replace(
        &format!("access_log = \"nginx/{}-access.log\"", site.app),
        "access_log = \"no-such-folder/access.log\"",
    );
    assert_ne!(moved, canary);
    site.set_config(&moved);
    let run = site.check();
    run.expect_code(1);
    assert_eq!(run.level("log file"), "FAIL", "{}", run.stdout);
    assert!(
        run.line("log file").contains("does not exist"),
        "{}",
        run.stdout
    );

    // Without [canary] again, the operator's own site passes as before.
    site.set_config(&plain);
    site.write_nginx_conf_with(&upstream, &proxy);
    site.check().expect_code(0);
}

#[test]
fn init_refuses_to_overwrite_and_then_writes_nothing_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let docker_config = dir.path().join("docker");
    let run = |args: &[&str]| fieldtrack(args, dir.path(), &docker_config);

    // One target exists: exit 2 naming it, and none of the others is created.
    let site = dir.path().join("site");
    fs::create_dir_all(site.join("nginx")).unwrap();
    fs::write(site.join("nginx/api-location.conf"), "mine\n").unwrap();
    let refused = run(&["init", "--dir", "site"]);
    refused.expect_code(2);
    assert!(
        refused.stderr.contains("api-location.conf"),
        "{}",
        refused.stderr
    );
    assert!(!site.join("fieldtrack.toml").exists());
    assert!(!site.join("desired.toml").exists());
    assert!(!site.join("nginx/api-upstream.conf").exists());
    assert_eq!(
        fs::read_to_string(site.join("nginx/api-location.conf")).unwrap(),
        "mine\n"
    );

    // A second init over a complete one changes no byte.
    let fresh = dir.path().join("fresh");
    run(&["init", "--dir", "fresh", "--repository", "ghcr.io/acme/api"]).expect_code(0);
    let before: Vec<(PathBuf, Vec<u8>)> = walk(&fresh);
    assert_eq!(before.len(), 5, "{before:?}");
    let again = run(&[
        "init",
        "--dir",
        "fresh",
        "--repository",
        "ghcr.io/acme/other",
    ]);
    again.expect_code(2);
    // Every file is named but the log format, which every app shares.
    for (path, _) in &before {
        let shared = path.ends_with("nginx/fieldtrack-log-format.conf");
        assert_eq!(
            again.stderr.contains(&path.display().to_string()),
            !shared,
            "{}: {}",
            path.display(),
            again.stderr
        );
    }
    assert_eq!(walk(&fresh), before);

    // Bad values and contradictory flags are refused before anything is written.
    run(&["init", "--dir", "bad", "--app", "Not An App"]).expect_code(2);
    run(&["init", "--dir", "bad", "--repository", "UPPER/case"]).expect_code(2);
    run(&["--config", "x.toml", "init", "--dir", "bad"]).expect_code(2);
    assert!(!dir.path().join("bad").exists());
}

#[test]
fn init_with_a_config_named_after_the_app_keeps_each_apps_files_apart() {
    let dir = tempfile::tempdir().unwrap();
    let docker_config = dir.path().join("docker");
    let run = |args: &[&str]| fieldtrack(args, dir.path(), &docker_config);
    for (app, blue, green) in [("api", "3001", "3002"), ("worker", "3003", "3004")] {
        // No --app: each is named after its config file. Another app on the same host
        // needs its own ports.
        let config = format!("{app}.toml");
        let repo = format!("ghcr.io/acme/{app}");
        let init = run(&[
            "--config",
            &config,
            "init",
            "--repository",
            &repo,
            "--blue-port",
            blue,
            "--green-port",
            green,
        ]);
        init.expect_code(0);
        // Loads, named after its file, and its own files are where the next steps say.
        let status = run(&["--config", &config, "status"]);
        status.expect_code(0);
        assert!(
            status
                .stdout
                .contains(&format!("{app}/desired/desired.toml")),
            "{}",
            status.stdout
        );
        assert!(
            status.stdout.contains(&format!("-> 127.0.0.1:{blue}")),
            "{}",
            status.stdout
        );
        let text = fs::read_to_string(dir.path().join(&config)).unwrap();
        assert!(text.contains(&format!("app = \"{app}\"")), "{text}");
        assert!(dir.path().join(app).join("desired/desired.toml").exists());
        assert!(dir
            .path()
            .join(format!("nginx/{app}-upstream.conf"))
            .exists());
    }
    // The config files are world-readable, never world-writable, whatever the umask.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(dir.path().join("api.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
}

/// Every file under `dir` with its bytes, sorted.
fn walk(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = fs::read(&path).unwrap();
                out.push((path, bytes));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn init_gives_the_desired_file_a_folder_of_its_own_for_the_deploy_group() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let dir = tempfile::tempdir().unwrap();
    let docker_config = dir.path().join("docker");
    let run = |args: &[&str]| fieldtrack(args, dir.path(), &docker_config);
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;

    // No fieldtrack-deploy group on this machine: the folder stays root's 0755, and the
    // next steps say how to hand it to CI.
    let groups = fs::read_to_string("/etc/group").unwrap_or_default();
    assert!(
        !groups.lines().any(|l| l.starts_with("fieldtrack-deploy:")),
        "this test expects no fieldtrack-deploy group on the machine"
    );
    let init = run(&["init", "--dir", "plain", "--repository", "ghcr.io/acme/api"]);
    init.expect_code(0);
    let plain = dir.path().join("plain");
    assert_eq!(mode(&plain.join("desired")), 0o755);
    assert!(
        init.stdout
            .contains(&format!("chmod 2775 {}", plain.join("desired").display())),
        "{}",
        init.stdout
    );
    // Nothing but the desired file in its folder; state and history in their own.
    let names: Vec<String> = fs::read_dir(plain.join("desired"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["desired.toml"]);
    let status = run(&["--config", "plain/fieldtrack.toml", "status"]);
    status.expect_code(0);

    // A deploy group named on the command line: setgid, group-writable, that group. The
    // config holds a webhook: 0600. Both load under the trust rule.
    let init = run(&[
        "init",
        "--dir",
        "shared",
        "--repository",
        "ghcr.io/acme/api",
        "--deploy-group",
        "nogroup",
        "--webhook",
        "https://hooks.example.com/services/T0/SECRET",
    ]);
    init.expect_code(0);
    assert!(!init.stdout.contains("SECRET"), "{}", init.stdout);
    let shared = dir.path().join("shared");
    assert_eq!(mode(&shared.join("desired")), 0o2775);
    assert_eq!(fs::metadata(shared.join("desired")).unwrap().gid(), 65534);
    assert_eq!(mode(&shared.join("fieldtrack.toml")), 0o600);
    assert_eq!(mode(&shared.join("desired/desired.toml")), 0o644);
    assert!(
        init.stdout.contains("usermod -aG nogroup CIUSER"),
        "{}",
        init.stdout
    );
    // Found from the current folder, trusted: root's, no group or world write above it.
    fieldtrack(&["status"], &shared, &docker_config).expect_code(0);
    let check = fieldtrack(&["check"], &shared, &docker_config);
    assert_eq!(check.level("layout"), "OK", "{}", check.stdout);

    // A group that does not exist: exit 2, nothing written.
    let refused = run(&[
        "init",
        "--dir",
        "nogroup",
        "--deploy-group",
        "fieldtrack-no-such-group",
    ]);
    refused.expect_code(2);
    assert!(
        refused
            .stderr
            .contains("no group named \"fieldtrack-no-such-group\""),
        "{}",
        refused.stderr
    );
    assert!(!dir.path().join("nogroup").exists());
}

/// `fieldtrack init | head`: a command whose reader is gone dies of SIGPIPE, quietly, like
/// any Unix tool, rather than panicking in println! (Rust ignores SIGPIPE by default).
#[test]
fn a_command_whose_reader_is_gone_dies_of_sigpipe_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = fieldtrack_in(dir.path())
        .args(["init", "--dir", "site"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
    assert!(stderr.is_empty(), "{stderr}");
}
