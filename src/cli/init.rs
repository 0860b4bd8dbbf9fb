//! `fieldtrack init`: the files a new server needs, written once, never over anything.
//!
//! The config is the shipped `fieldtrack.toml.example` itself, with the app's values put in,
//! so the reference of every key has one source. Every path in it is relative to the
//! config's folder, so the same files work under `/etc/fieldtrack`, a home folder or a test's
//! private prefix. The desired file names no image yet: the first `fieldtrack deploy` writes
//! it. Until then `fieldtrack check` warns and a pass has nothing to converge to.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use clap::Args;

use super::CliError;
use crate::apply::proxy;
use crate::config::{Config, CONFIG_ENV, DEFAULT_PATH, FILE_NAME};

/// The shipped config reference; `init` writes it with the app's values.
const CONFIG_EXAMPLE: &str = include_str!("../../fieldtrack.toml.example");
/// The shipped desired-file reference; `init` writes it with every value commented out.
const DESIRED_EXAMPLE: &str = include_str!("../../desired.toml.example");

/// The repository the example names; replaced everywhere by the app's.
const EXAMPLE_REPOSITORY: &str = "ghcr.io/fieldtrack-tech/api";
/// Written when `--repository` is not given: a valid name that cannot be anyone's
/// (example.com is reserved), so `fieldtrack check` can insist that it be changed.
pub(crate) const PLACEHOLDER_REGISTRY: &str = "registry.example.com";

/// The keys of the desired file, commented out in the generated one.
const DESIRED_KEYS: &[&str] = &["image", "digest", "note", "by", "paused"];

/// Permissions of every file written: the config and desired file must not be
/// world-writable (they are refused), nginx's workers must read the snippets.
const FILE_MODE: u32 = 0o644;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The app's name: containers NAME-blue / NAME-green, nginx upstream fieldtrack_NAME
    /// (default: the config file's name with --config, else api).
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,
    /// The image repository, e.g. ghcr.io/acme/api (default: a placeholder to edit).
    #[arg(long, value_name = "REPO")]
    pub repository: Option<String>,
    /// The folder to write into (created when missing); the config is DIR/fieldtrack.toml.
    /// With --config PATH instead, the config is PATH and the app's files go into a
    /// folder named after it, so several apps can share /etc/fieldtrack
    /// (`--config /etc/fieldtrack/api.toml` for the unit fieldtrack@api).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Host port of the blue container (default 3001); another app on this host needs others.
    #[arg(long, value_name = "PORT")]
    pub blue_port: Option<u16>,
    /// Host port of the green container (default 3002).
    #[arg(long, value_name = "PORT")]
    pub green_port: Option<u16>,
}

/// What the operator chose; everything else is the example's default.
#[derive(Debug, Clone, Default)]
pub struct Choices {
    pub app: Option<String>,
    pub repository: Option<String>,
    pub blue_port: Option<u16>,
    pub green_port: Option<u16>,
}

/// One file `init` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub path: PathBuf,
    pub text: String,
    /// What it is, for the summary.
    pub what: String,
}

/// Everything `init` would write, and what to tell the operator afterwards.
#[derive(Debug, Clone)]
pub struct Layout {
    pub config: Config,
    pub files: Vec<Planned>,
    pub upstream_snippet: PathBuf,
    pub location_snippet: PathBuf,
    pub placeholder_repository: bool,
}

/// Runs `fieldtrack init`: exit 0 with every file written, or 2 with none.
pub fn run(config_flag: Option<&Path>, args: InitArgs) -> Result<u8, CliError> {
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::Failed(format!("cannot read the current folder: {e}")))?;
    let config_path = match (config_flag, &args.dir) {
        (Some(_), Some(_)) => {
            return Err(CliError::Invalid(
                "init: give --dir DIR or --config PATH, not both".into(),
            ))
        }
        (Some(path), None) => std::path::absolute(cwd.join(path)).unwrap_or(cwd.join(path)),
        (None, dir) => {
            let dir = cwd.join(dir.as_deref().unwrap_or(Path::new(".")));
            std::path::absolute(&dir).unwrap_or(dir).join(FILE_NAME)
        }
    };
    let choices = Choices {
        app: args.app,
        repository: args.repository,
        blue_port: args.blue_port,
        green_port: args.green_port,
    };
    let layout = plan(&config_path, &choices)?;
    let existing: Vec<String> = layout
        .files
        .iter()
        .filter(|f| f.path.symlink_metadata().is_ok())
        .map(|f| f.path.display().to_string())
        .collect();
    if !existing.is_empty() {
        return Err(CliError::Invalid(format!(
            "init: refusing to overwrite {}; nothing was written (move it away or choose another --dir)",
            existing.join(", ")
        )));
    }
    write_all(&layout.files)?;

    println!("Wrote:");
    let width = layout
        .files
        .iter()
        .map(|f| f.path.display().to_string().len())
        .max()
        .unwrap_or(0);
    for file in &layout.files {
        println!(
            "  {:width$}  {}",
            file.path.display().to_string(),
            file.what
        );
    }
    let env = std::env::var_os(CONFIG_ENV);
    let found = Config::locate_with(None, env.as_deref(), &cwd);
    println!("\n{}", next_steps(&layout, found == layout.config.path));
    Ok(0)
}

/// What `init` writes for the config at `config_path` (absolute): validated, nothing
/// touched yet. An invalid choice: exit 2, naming the key and the value.
pub fn plan(config_path: &Path, choices: &Choices) -> Result<Layout, CliError> {
    let data = data_prefix(config_path);
    let app = match (&choices.app, data.strip_suffix('/')) {
        (Some(app), _) => app.clone(),
        (None, Some(stem)) => stem.to_string(),
        (None, None) => "api".to_string(),
    };
    let app = app.as_str();
    let placeholder_repository = choices.repository.is_none();
    let repository = match &choices.repository {
        Some(repo) => repo.clone(),
        None => format!("{PLACEHOLDER_REGISTRY}/{}", app.to_ascii_lowercase()),
    };
    // The defaults `init` does not spell out (the upstream name) come from the config
    // rules themselves, by validating the two values alone first.
    let minimal = format!(
        "app = {}\nrepository = {}\n",
        toml_string(app),
        toml_string(&repository)
    );
    let base = Config::parse(&minimal, config_path, None)?;

    let upstream_rel = format!("nginx/{app}-upstream.conf");
    let location_rel = format!("nginx/{app}-location.conf");
    let config_text = render_config(&Rendered {
        app,
        repository: &repository,
        upstream_name: &base.nginx.upstream_name,
        data: &data,
        upstream_rel: &upstream_rel,
        placeholder_repository,
        blue_port: choices.blue_port.unwrap_or(base.container.blue_port),
        green_port: choices.green_port.unwrap_or(base.container.green_port),
    });
    let config = Config::parse(&config_text, config_path, None)?;

    let desired_dir = config
        .desired_file
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let dir = config_path.parent().unwrap_or(Path::new("/"));
    let upstream_snippet = dir.join(&upstream_rel);
    let location_snippet = dir.join(&location_rel);
    let files = vec![
        Planned {
            path: config.path.clone(),
            text: config_text,
            what: "the config: every key, commented".into(),
        },
        Planned {
            path: config.desired_file.clone(),
            text: render_desired(&repository, &desired_dir),
            what: "what should run: no image yet (`fieldtrack deploy` writes it)".into(),
        },
        Planned {
            path: upstream_snippet.clone(),
            text: proxy::render(
                &config.nginx.upstream_name,
                config.container.blue_port,
                "nothing yet; placeholder written by fieldtrack init, pointing at blue",
                config.nginx.upstream_keepalive,
            ),
            what: format!(
                "nginx upstream file fieldtrack rewrites; include it in http {{ }} (placeholder: 127.0.0.1:{})",
                config.container.blue_port
            ),
        },
        Planned {
            path: location_snippet.clone(),
            text: render_location(app, &config.nginx.upstream_name, &location_snippet),
            what: "nginx location with the zero-downtime proxy settings, for your server { }"
                .into(),
        },
    ];
    Ok(Layout {
        config,
        files,
        upstream_snippet,
        location_snippet,
        placeholder_repository,
    })
}

/// Where the app's own files go, relative to the config's folder: beside
/// `fieldtrack.toml`, or in a folder named after any other config file (`api.toml`:
/// `api/`), so that one folder can hold the configs of several apps.
fn data_prefix(config_path: &Path) -> String {
    match config_path.file_name().and_then(|n| n.to_str()) {
        Some(FILE_NAME) | None => String::new(),
        Some(name) => {
            let stem = name.strip_suffix(".toml").unwrap_or(name);
            format!("{stem}/")
        }
    }
}

/// The values the example config is rendered with.
struct Rendered<'a> {
    app: &'a str,
    repository: &'a str,
    upstream_name: &'a str,
    /// Folder of the app's own files, relative to the config's: "" or "NAME/".
    data: &'a str,
    upstream_rel: &'a str,
    placeholder_repository: bool,
    blue_port: u16,
    green_port: u16,
}

/// The example config with the app's values.
fn render_config(r: &Rendered<'_>) -> String {
    let Rendered { app, data, .. } = *r;
    let repository_line = if r.placeholder_repository {
        format!(
            "repository = {}   # placeholder: set your image repository",
            toml_string(r.repository)
        )
    } else {
        format!("repository = {}", toml_string(r.repository))
    };
    let replacements: Vec<(&str, String)> = vec![
        ("app = \"api\"", format!("app = {}", toml_string(app))),
        (
            "repository = \"ghcr.io/fieldtrack-tech/api\"",
            repository_line,
        ),
        (
            "desired_file = \"desired.toml\"",
            format!("desired_file = \"{data}desired.toml\""),
        ),
        (
            "history_file = \".deploy_history\"",
            format!("history_file = \"{data}.deploy_history\""),
        ),
        (
            "state_dir = \".fieldtrack\"",
            format!("state_dir = \"{data}.fieldtrack\""),
        ),
        ("blue_port = 3001", format!("blue_port = {}", r.blue_port)),
        (
            "green_port = 3002",
            format!("green_port = {}", r.green_port),
        ),
        ("env_file = \".env\"", format!("env_file = \"{data}.env\"")),
        (
            "upstream_file = \"/etc/nginx/conf.d/fieldtrack-api.conf\"",
            format!(
                "upstream_file = \"{}\"   # written by fieldtrack init",
                r.upstream_rel
            ),
        ),
        (
            "upstream_name = \"fieldtrack_api\"",
            format!("upstream_name = {}", toml_string(r.upstream_name)),
        ),
    ];
    let mut text = format!(
        "# Written by `fieldtrack init` for the app {app:?}. Below: the reference of every key\n\
         # (also /usr/share/doc/fieldtrack/fieldtrack.toml.example), set to its default except\n\
         # the app, the repository and the paths fieldtrack init chose. All paths are relative\n\
         # to this file's folder.\n#\n"
    );
    text.push_str(&replace_lines(CONFIG_EXAMPLE, &replacements));
    text
}

/// The example desired file with every value commented out and the app's repository and
/// folder in the instructions.
fn render_desired(repository: &str, desired_dir: &Path) -> String {
    let mut text = String::from(
        "# Written by `fieldtrack init`. It names no image yet, so nothing is deployed: the first\n\
         # `fieldtrack deploy TAG` writes this file (without these comments), or uncomment\n\
         # `image` below. Until then `fieldtrack check` warns and the daemon reports it invalid.\n#\n",
    );
    let body = DESIRED_EXAMPLE
        .replace(EXAMPLE_REPOSITORY, repository)
        .replace("/etc/fieldtrack/", &format!("{}/", desired_dir.display()));
    for line in body.lines() {
        let is_value = DESIRED_KEYS
            .iter()
            .any(|key| line.starts_with(&format!("{key} = ")));
        if is_value {
            text.push_str("# ");
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The `location` block with the proxy settings that keep a switch free of failed requests.
fn render_location(app: &str, upstream_name: &str, path: &Path) -> String {
    format!(
        r#"# Written by `fieldtrack init` for the app {app:?}: how your site proxies to it.
# Put these lines in your site's `server {{ }}` block, or include this file there:
#     include {path};
# Change `location /` and add your own settings as you like; keep the proxy_* lines.
# Also set `worker_shutdown_timeout 30s;` in the main context of nginx.conf: nginx's old
# workers exit at the latest that long after a reload, and the drain waits for them.
location / {{
    # The upstream block fieldtrack rewrites (its upstream file, included in `http {{ }}`).
    # This line never changes: a deployment only changes the port in that file.
    proxy_pass http://{upstream_name};
    # HTTP/1.1 to the app, without passing the client's Connection header through.
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    # Failures nginx may retry instead of returning them to the client.
    proxy_next_upstream error timeout http_502 http_503;
    proxy_connect_timeout 2s;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
}}
"#,
        path = path.display(),
    )
}

/// The three things to do next, with the commands for this layout. `found` says the
/// config is the one `fieldtrack` finds without `--config` from here.
fn next_steps(layout: &Layout, found: bool) -> String {
    let cfg = &layout.config;
    let ft = if found {
        "fieldtrack".to_string()
    } else {
        format!("fieldtrack --config {}", cfg.path.display())
    };
    let check = if layout.placeholder_repository {
        format!(
            "Set `repository` in {} (it is a placeholder), then check the setup",
            cfg.path.display()
        )
    } else {
        "Check the setup".to_string()
    };
    let daemon = match daemon_unit(&cfg.path) {
        Some(unit) => format!("systemctl enable --now {unit}"),
        None => format!("{ft} daemon"),
    };
    format!(
        "Next steps:\n\
         \x20 1. nginx: include the upstream file in the http context and proxy your site to it.\n\
         \x20    Debian's nginx.conf includes /etc/nginx/conf.d/*.conf inside http {{ }}, so:\n\
         \x20      echo 'include {upstream};' > /etc/nginx/conf.d/fieldtrack-{app}.conf\n\
         \x20    and in your site's server {{ }} block (or copy its lines there):\n\
         \x20      include {location};\n\
         \x20    then: nginx -t && systemctl reload nginx\n\
         \x20 2. {check} (config, Docker, registry login, nginx, ports):\n\
         \x20      {ft} check\n\
         \x20 3. Deploy a first image and keep it converged:\n\
         \x20      {ft} deploy TAG\n\
         \x20      {daemon}",
        upstream = layout.upstream_snippet.display(),
        location = layout.location_snippet.display(),
        app = cfg.app,
    )
}

/// The systemd unit that runs the daemon for a config at its place under /etc/fieldtrack.
fn daemon_unit(config: &Path) -> Option<String> {
    if config == Path::new(DEFAULT_PATH) {
        return Some("fieldtrack".into());
    }
    let dir = Path::new(DEFAULT_PATH).parent()?;
    let name = config.strip_prefix(dir).ok()?.to_str()?;
    let instance = name.strip_suffix(".toml")?;
    (!instance.contains('/')).then(|| format!("fieldtrack@{instance}"))
}

/// Writes every file, each created anew (never over one that appeared meanwhile). On any
/// failure the files already written are removed again: all or nothing.
fn write_all(files: &[Planned]) -> Result<(), CliError> {
    let mut written: Vec<&Path> = Vec::new();
    for file in files {
        if let Err(e) = write_new(&file.path, &file.text) {
            for path in written {
                let _ = fs::remove_file(path);
            }
            let kind = if e.kind() == std::io::ErrorKind::AlreadyExists {
                "refusing to overwrite"
            } else {
                "cannot write"
            };
            return Err(CliError::Failed(format!(
                "init: {kind} {}: {e}; nothing was written",
                file.path.display()
            )));
        }
        written.push(&file.path);
    }
    Ok(())
}

fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    // The mode above is filtered by the umask; a permissive umask must not make the
    // config world-writable (it would be refused), nor a strict one hide it from nginx.
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Replaces each whole line `from` by `to`; every `from` is in the example exactly once
/// (a unit test holds the example to that).
fn replace_lines(text: &str, replacements: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        match replacements.iter().find(|(from, _)| line == *from) {
            Some((_, to)) => out.push_str(to),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{Desired, DesiredError};

    fn choices(app: Option<&str>, repo: Option<&str>) -> Choices {
        Choices {
            app: app.map(str::to_string),
            repository: repo.map(str::to_string),
            ..Choices::default()
        }
    }

    fn layout(config: &str, app: &str, repo: Option<&str>) -> Layout {
        plan(Path::new(config), &choices(Some(app), repo)).unwrap()
    }

    #[test]
    fn every_replaced_line_is_in_the_example_exactly_once() {
        let replaced = render_config(&Rendered {
            app: "x",
            repository: "r.io/x",
            upstream_name: "fieldtrack_x",
            data: "d/",
            upstream_rel: "nginx/x.conf",
            placeholder_repository: false,
            blue_port: 4001,
            green_port: 4002,
        });
        for line in [
            "app = \"api\"",
            "repository = \"ghcr.io/fieldtrack-tech/api\"",
            "desired_file = \"desired.toml\"",
            "history_file = \".deploy_history\"",
            "state_dir = \".fieldtrack\"",
            "blue_port = 3001",
            "green_port = 3002",
            "env_file = \".env\"",
            "upstream_file = \"/etc/nginx/conf.d/fieldtrack-api.conf\"",
            "upstream_name = \"fieldtrack_api\"",
        ] {
            let count = CONFIG_EXAMPLE.lines().filter(|l| *l == line).count();
            assert_eq!(count, 1, "{line:?} in fieldtrack.toml.example");
            assert!(
                !replaced.lines().any(|l| l == line),
                "{line:?} not replaced"
            );
        }
        for key in ["image", "note", "by", "paused"] {
            assert!(
                DESIRED_EXAMPLE
                    .lines()
                    .any(|l| l.starts_with(&format!("{key} = "))),
                "desired.toml.example sets {key}"
            );
        }
    }

    #[test]
    fn generated_config_keeps_every_comment_and_key_of_the_example() {
        let l = layout(
            "/srv/site/fieldtrack.toml",
            "web-1",
            Some("ghcr.io/acme/web"),
        );
        let text = &l.files[0].text;
        let example_comments = CONFIG_EXAMPLE
            .lines()
            .filter(|l| l.starts_with('#'))
            .count();
        assert!(text.lines().filter(|l| l.starts_with('#')).count() > example_comments);
        let cfg = &l.config;
        assert_eq!(cfg.app, "web-1");
        assert_eq!(cfg.repository, "ghcr.io/acme/web");
        assert_eq!(cfg.nginx.upstream_name, "fieldtrack_web_1");
        assert_eq!(cfg.desired_file, Path::new("/srv/site/desired.toml"));
        assert_eq!(cfg.history_file, Path::new("/srv/site/.deploy_history"));
        assert_eq!(cfg.state_dir, Path::new("/srv/site/.fieldtrack"));
        assert_eq!(cfg.container.env_file, Path::new("/srv/site/.env"));
        assert_eq!(
            cfg.nginx.upstream_file,
            Path::new("/srv/site/nginx/web-1-upstream.conf")
        );
        assert_eq!(l.upstream_snippet, cfg.nginx.upstream_file);
        assert!(!l.placeholder_repository);
    }

    #[test]
    fn a_config_named_after_the_app_keeps_its_files_in_a_folder_of_that_name() {
        let l = layout("/etc/fieldtrack/worker.toml", "worker", Some("ghcr.io/a/w"));
        assert_eq!(
            l.config.desired_file,
            Path::new("/etc/fieldtrack/worker/desired.toml")
        );
        assert_eq!(
            l.config.state_dir,
            Path::new("/etc/fieldtrack/worker/.fieldtrack")
        );
        assert_eq!(
            l.config.nginx.upstream_file,
            Path::new("/etc/fieldtrack/nginx/worker-upstream.conf")
        );
        let steps = next_steps(&l, false);
        assert!(
            steps.contains("systemctl enable --now fieldtrack@worker"),
            "{steps}"
        );
        assert!(steps.contains("fieldtrack --config /etc/fieldtrack/worker.toml check"));
    }

    #[test]
    fn ports_chosen_at_init_go_into_the_config_and_the_placeholder_upstream() {
        let mut c = choices(None, Some("ghcr.io/acme/worker"));
        c.blue_port = Some(3003);
        c.green_port = Some(3004);
        let l = plan(Path::new("/etc/fieldtrack/worker.toml"), &c).unwrap();
        assert_eq!(
            l.config.app, "worker",
            "the app is named after its config file"
        );
        assert_eq!(l.config.container.blue_port, 3003);
        assert_eq!(l.config.container.green_port, 3004);
        assert_eq!(
            proxy::parse_port(&l.files[2].text, "fieldtrack_worker"),
            Some(3003)
        );
        c.green_port = Some(3003);
        let err = plan(Path::new("/etc/fieldtrack/worker.toml"), &c).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("green_port"), "{err}");
    }

    #[test]
    fn generated_desired_file_names_no_image_yet() {
        let l = layout("/srv/site/fieldtrack.toml", "api", Some("ghcr.io/acme/api"));
        let text = &l.files[1].text;
        let err = Desired::parse(text, &l.config.desired_file, &l.config).unwrap_err();
        assert!(matches!(err, DesiredError::MissingImage { .. }), "{err:?}");
        assert!(text.contains("# image = \"a4f91c2\""));
        assert!(text.contains("ghcr.io/acme/api:a4f91c2"));
        assert!(text.contains("ssh host mv /srv/site/.desired.toml.tmp /srv/site/desired.toml"));
        // Uncommenting the image line is all it takes.
        let fixed = text.replace("# image = \"a4f91c2\"", "image = \"a4f91c2\"");
        let d = Desired::parse(&fixed, &l.config.desired_file, &l.config).unwrap();
        assert_eq!(d.image.to_string(), "a4f91c2");
        assert!(!d.paused && d.note.is_none());
    }

    #[test]
    fn nginx_snippets_point_at_the_upstream_name_and_blue() {
        let l = layout("/srv/site/fieldtrack.toml", "api", Some("ghcr.io/acme/api"));
        let upstream = &l.files[2].text;
        assert_eq!(
            proxy::parse_port(upstream, "fieldtrack_api"),
            Some(l.config.container.blue_port)
        );
        let location = &l.files[3].text;
        for line in [
            "proxy_pass http://fieldtrack_api;",
            "proxy_http_version 1.1;",
            "proxy_set_header Connection \"\";",
            "proxy_next_upstream error timeout http_502 http_503;",
        ] {
            assert!(location.contains(line), "{line}");
        }
    }

    #[test]
    fn without_a_repository_a_placeholder_is_written_and_named_in_the_next_steps() {
        let l = layout("/etc/fieldtrack/fieldtrack.toml", "api", None);
        assert_eq!(l.config.repository, "registry.example.com/api");
        assert!(l.placeholder_repository);
        let steps = next_steps(&l, true);
        assert!(steps.contains("Set `repository`"), "{steps}");
        assert!(steps.contains("      fieldtrack check"), "{steps}");
        assert!(
            steps.contains("systemctl enable --now fieldtrack\n")
                || steps.ends_with("systemctl enable --now fieldtrack")
        );
    }

    #[test]
    fn invalid_app_or_repository_is_refused_naming_the_value() {
        let path = Path::new("/x/fieldtrack.toml");
        let err = plan(path, &choices(Some("Bad App"), None)).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("\"Bad App\""), "{err}");
        let err = plan(path, &choices(Some("api"), Some("Not/Valid"))).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("repository"), "{err}");
    }

    #[test]
    fn quotes_in_values_cannot_break_out_of_the_toml_string() {
        // Refused by the rules anyway; the point is that it is refused, not injected.
        let bad = choices(Some("api\"\nx = \"1"), None);
        let err = plan(Path::new("/x/fieldtrack.toml"), &bad).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }
}
