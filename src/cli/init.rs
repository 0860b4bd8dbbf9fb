//! `fieldtrack init`: the files a new server needs, written once, never over anything.
//!
//! The config is the shipped `fieldtrack.toml.example` itself, with the app's values put in,
//! so the reference of every key has one source. The desired file names no image yet: the
//! first `fieldtrack deploy` writes it. Until then `fieldtrack check` warns and a pass has
//! nothing to converge to.
//!
//! The layout keeps the desired file, the one file CI writes, in a folder of its own
//! (`desired/`, group-writable by `fieldtrack-deploy` when that group exists): whoever may
//! write a folder may rename anything in it, so the config, the env file and the state must
//! not share it. Under `/etc/fieldtrack` (the systemd units' place) the app's files go to
//! `/etc/fieldtrack/NAME/` and its state and history to `/var/lib/fieldtrack/NAME` (the
//! units' StateDirectory); anywhere else (a home folder, a test's private prefix) everything
//! stays below the config's folder, every path relative to it.
//!
//! The nginx snippets also make nginx log the app's requests in fieldtrack's JSON
//! `log_format` (what a `[canary]` step is judged from) to `nginx.access_log`: under
//! `/var/log/nginx` in the system layout, where Debian's logrotate already rotates every
//! `*.log`. The `log_format` has a snippet of its own, not the upstream file (fieldtrack
//! rewrites that one whole at every switch), shared by the apps whose configs share a folder:
//! nginx refuses a second `log_format fieldtrack`, so the operator includes it once per host.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{chown, DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use clap::Args;

use super::CliError;
use crate::config::{Config, CONFIG_ENV, DEFAULT_PATH, FILE_NAME};
use crate::observe::access_log::LOG_FORMAT;

/// The shipped config reference; `init` writes it with the app's values.
const CONFIG_EXAMPLE: &str = include_str!("../../fieldtrack.toml.example");
/// The shipped desired-file reference; `init` writes it with every value commented out.
const DESIRED_EXAMPLE: &str = include_str!("../../desired.toml.example");

/// The repository the example names; replaced everywhere by the app's.
const EXAMPLE_REPOSITORY: &str = "ghcr.io/fieldtrack-tech/api";
/// Written when `--repository` is not given: a valid name that cannot be anyone's
/// (example.com is reserved), so `fieldtrack check` can insist that it be changed.
pub(crate) const PLACEHOLDER_REGISTRY: &str = "registry.example.com";

/// The desired file's folder in the example's instructions; replaced by the app's.
const EXAMPLE_DESIRED_DIR: &str = "/etc/fieldtrack/api/desired/";

/// The keys of the desired file, commented out in the generated one.
const DESIRED_KEYS: &[&str] = &["image", "digest", "note", "by", "paused"];

/// Permissions of every file written: the config and desired file must not be
/// world-writable (they are refused), nginx's workers must read the snippets.
const FILE_MODE: u32 = 0o644;
/// The config's permissions when it holds a webhook URL (its token is a secret).
const SECRET_FILE_MODE: u32 = 0o600;
/// The desired file's folder when the deploy group exists: its members may add and rename
/// files there (rwx for the group), and new files get the folder's group (setgid).
const DESIRED_DIR_MODE: u32 = 0o2775;
/// The group whose members may write the desired file's folder, unless --deploy-group.
pub(crate) const DEPLOY_GROUP: &str = "fieldtrack-deploy";
/// The folder of the units' configs; a config there gets the system layout.
const SYSTEM_CONFIG_DIR: &str = "/etc/fieldtrack";
/// Where the system layout keeps each app's state and history (systemd's StateDirectory).
const SYSTEM_STATE_DIR: &str = "/var/lib/fieldtrack";
/// Where the system layout publishes, for the deploy group, what each app's daemon lets it
/// read (`public_dir`): beside the state folder, which stays root's alone.
const SYSTEM_PUBLIC_DIR: &str = "/var/lib/fieldtrack-public";
/// The published folder: root writes, the deploy group reads, files get the group (setgid).
const PUBLIC_DIR_MODE: u32 = 0o2750;
/// Where the system layout has nginx write each app's access log: nginx's own log folder,
/// which Debian's logrotate rotates (`/var/log/nginx/*.log`).
const SYSTEM_LOG_DIR: &str = "/var/log/nginx";
/// The `log_format` snippet, beside the apps' other snippets; one for all of them.
const LOG_FORMAT_SNIPPET: &str = "nginx/fieldtrack-log-format.conf";

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
    /// The group whose members (CI's user) may write the desired file's folder, which then
    /// gets mode 2775 and this group (default: fieldtrack-deploy, when it exists).
    #[arg(long, value_name = "GROUP")]
    pub deploy_group: Option<String>,
    /// A webhook notified after each deployment attempt (notify.webhook); the config is
    /// then written with mode 0600, since the URL usually holds a token.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
}

/// What the operator chose; everything else is the example's default.
#[derive(Debug, Clone, Default)]
pub struct Choices {
    pub app: Option<String>,
    pub repository: Option<String>,
    pub blue_port: Option<u16>,
    pub green_port: Option<u16>,
    pub webhook: Option<String>,
}

/// One file `init` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub path: PathBuf,
    pub text: String,
    /// What it is, for the summary.
    pub what: String,
    /// Its permissions.
    pub mode: u32,
    /// Shared by every app whose config is in this folder (the `log_format` snippet): one
    /// already there with the same text is kept, not refused.
    pub shared: bool,
}

impl Planned {
    /// The file is there already with this very text: a shared file another app's `init`
    /// wrote.
    fn already_there(&self) -> bool {
        self.shared
            && self.path.symlink_metadata().is_ok_and(|m| m.is_file())
            && fs::read(&self.path).is_ok_and(|bytes| bytes == self.text.as_bytes())
    }
}

/// Everything `init` would write, and what to tell the operator afterwards.
#[derive(Debug, Clone)]
pub struct Layout {
    pub config: Config,
    pub files: Vec<Planned>,
    /// The desired file's folder: CI's only way in.
    pub desired_dir: PathBuf,
    pub upstream_snippet: PathBuf,
    pub location_snippet: PathBuf,
    /// The `log_format` snippet, to include once in nginx's http context.
    pub log_format_snippet: PathBuf,
    pub placeholder_repository: bool,
}

/// Who may write the desired file's folder besides root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeployGroup {
    /// The group exists: the folder gets it and mode 2775.
    Found { name: String, gid: u32 },
    /// The default group does not exist (yet): the folder stays 0755, and the next steps
    /// say how to make it.
    Missing { name: String },
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
        webhook: args.webhook,
    };
    let layout = plan(&config_path, &choices)?;
    let group = deploy_group(args.deploy_group.as_deref())?;
    let (kept, new): (Vec<&Planned>, Vec<&Planned>) =
        layout.files.iter().partition(|f| f.already_there());
    let existing: Vec<String> = new
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
    let new_desired_dir = !layout.desired_dir.exists();
    write_all(&new)?;
    if new_desired_dir {
        share_desired_dir(&layout.desired_dir, &group)?;
    }
    share_public_dir(&layout.config.public_dir, &group)?;

    println!("Wrote:");
    let width = layout
        .files
        .iter()
        .map(|f| f.path.display().to_string().len())
        .max()
        .unwrap_or(0);
    for file in &new {
        println!(
            "  {:width$}  {}",
            file.path.display().to_string(),
            file.what
        );
    }
    if !kept.is_empty() {
        println!("Kept (another app's init wrote the same text):");
    }
    for file in &kept {
        println!(
            "  {:width$}  {}",
            file.path.display().to_string(),
            file.what
        );
    }
    let env = std::env::var_os(CONFIG_ENV);
    let found = Config::locate_with(None, env.as_deref(), &cwd);
    println!(
        "\n{}",
        next_steps(&layout, found == layout.config.path, &group)
    );
    Ok(0)
}

/// The deploy group: the one named by --deploy-group, which must exist (exit 2), else
/// `fieldtrack-deploy` if it exists.
fn deploy_group(flag: Option<&str>) -> Result<DeployGroup, CliError> {
    let name = flag.unwrap_or(DEPLOY_GROUP);
    match (group_id(name), flag) {
        (Some(gid), _) => Ok(DeployGroup::Found {
            name: name.to_owned(),
            gid,
        }),
        (None, None) => Ok(DeployGroup::Missing {
            name: name.to_owned(),
        }),
        (None, Some(_)) => Err(CliError::Invalid(format!(
            "init: --deploy-group: no group named {name:?} (create it first: groupadd --system {name})"
        ))),
    }
}

/// The id of the group `name`, if there is one.
fn group_id(name: &str) -> Option<u32> {
    // A name with a NUL in it is no group's (nix answers None for it).
    let group = nix::unistd::Group::from_name(name).ok()??;
    Some(group.gid.as_raw())
}

/// Gives the deploy group the desired file's folder that `init` just created.
fn share_desired_dir(dir: &Path, group: &DeployGroup) -> Result<(), CliError> {
    let DeployGroup::Found { name, gid } = group else {
        return Ok(());
    };
    chown(dir, None, Some(*gid))
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(DESIRED_DIR_MODE)))
        .map_err(|e| {
            CliError::Failed(format!(
                "init: wrote every file, but cannot give {dir} to the group {name}: {e}; run \
                 `chgrp {name} {dir} && chmod 2775 {dir}`",
                dir = dir.display()
            ))
        })
}

/// Makes the folder the daemon publishes into for the deploy group: root's, readable by the
/// group (2750, setgid so that every file written there gets the group), its parents 0755.
/// Without the group it stays root's (0750); the next steps say how to share it.
fn share_public_dir(dir: &Path, group: &DeployGroup) -> Result<(), CliError> {
    let failed = |e: std::io::Error| {
        CliError::Failed(format!(
            "init: wrote every file, but cannot make {}: {e}",
            dir.display()
        ))
    };
    if let Some(parent) = dir.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(failed)?;
    }
    match fs::DirBuilder::new().mode(0o750).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(e)),
    }
    let DeployGroup::Found { name, gid } = group else {
        return fs::set_permissions(dir, fs::Permissions::from_mode(0o750)).map_err(failed);
    };
    chown(dir, None, Some(*gid))
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(PUBLIC_DIR_MODE)))
        .map_err(|e| {
            CliError::Failed(format!(
                "init: wrote every file, but cannot give {dir} to the group {name}: {e}; run \
                 `chgrp {name} {dir} && chmod 2750 {dir}`",
                dir = dir.display()
            ))
        })
}

/// What `init` writes for the config at `config_path` (absolute): validated, nothing
/// touched yet. An invalid choice: exit 2, naming the key and the value.
pub fn plan(config_path: &Path, choices: &Choices) -> Result<Layout, CliError> {
    let stem = config_stem(config_path);
    let app = match (&choices.app, &stem) {
        (Some(app), _) => app.clone(),
        (None, Some(stem)) => stem.clone(),
        (None, None) => "api".to_string(),
    };
    let app = app.as_str();
    let places = Places::new(config_path, stem.as_deref(), app);
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
        places: &places,
        upstream_rel: &upstream_rel,
        placeholder_repository,
        blue_port: choices.blue_port.unwrap_or(base.container.blue_port),
        green_port: choices.green_port.unwrap_or(base.container.green_port),
        webhook: choices.webhook.as_deref(),
    });
    let config = Config::parse(&config_text, config_path, None)?;
    let config_mode = if config.notify.webhook.is_some() {
        SECRET_FILE_MODE
    } else {
        FILE_MODE
    };

    let desired_dir = config
        .desired_file
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let dir = config_path.parent().unwrap_or(Path::new("/"));
    let upstream_snippet = dir.join(&upstream_rel);
    let location_snippet = dir.join(&location_rel);
    let log_format_snippet = dir.join(LOG_FORMAT_SNIPPET);
    let access_log = config
        .nginx
        .access_log
        .clone()
        .expect("init's config sets nginx.access_log");
    let files = vec![
        Planned {
            path: config.path.clone(),
            text: config_text,
            what: "the config: every key, commented".into(),
            mode: config_mode,
            shared: false,
        },
        Planned {
            path: config.desired_file.clone(),
            text: render_desired(&repository, &desired_dir),
            what: "what should run: no image yet (`fieldtrack deploy` writes it); its folder \
                   is the only one CI may write"
                .into(),
            mode: FILE_MODE,
            shared: false,
        },
        Planned {
            path: upstream_snippet.clone(),
            text: crate::nginx_conf::upstream::render(
                &config.nginx.upstream_name,
                config.container.blue_port,
                "nothing yet; placeholder written by fieldtrack init, pointing at blue",
                config.nginx.upstream_keepalive,
            ),
            what: format!(
                "nginx upstream file fieldtrack rewrites; include it in http {{ }} (placeholder: 127.0.0.1:{})",
                config.container.blue_port
            ),
            mode: FILE_MODE,
            shared: false,
        },
        Planned {
            path: location_snippet.clone(),
            text: render_location(&Location {
                app,
                upstream_name: &config.nginx.upstream_name,
                path: &location_snippet,
                access_log: &access_log,
                log_format_snippet: &log_format_snippet,
            }),
            what: format!(
                "nginx location with the zero-downtime proxy settings and the access log {}, \
                 for your server {{ }}",
                access_log.display()
            ),
            mode: FILE_MODE,
            shared: false,
        },
        Planned {
            path: log_format_snippet.clone(),
            text: render_log_format(),
            what: "nginx log_format fieldtrack (JSON, what a canary is judged from); include \
                   it once in http { }, for every app"
                .into(),
            mode: FILE_MODE,
            shared: true,
        },
    ];
    Ok(Layout {
        config,
        files,
        desired_dir,
        upstream_snippet,
        location_snippet,
        log_format_snippet,
        placeholder_repository,
    })
}

/// The name of a config file other than `fieldtrack.toml`, without `.toml` (`api.toml`:
/// `api`): its app's files go into a folder of that name, so that one folder can hold the
/// configs of several apps.
fn config_stem(config_path: &Path) -> Option<String> {
    match config_path.file_name().and_then(|n| n.to_str()) {
        Some(FILE_NAME) | None => None,
        Some(name) => Some(name.strip_suffix(".toml").unwrap_or(name).to_owned()),
    }
}

/// Where the app's files go, as written into the config: relative to its folder, or
/// absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Places {
    desired_file: String,
    env_file: String,
    state_dir: String,
    public_dir: String,
    history_file: String,
    access_log: String,
}

impl Places {
    /// The system layout for a config in `/etc/fieldtrack` (what the units run):
    /// `NAME/desired/desired.toml` and `NAME/.env` beside it, state and history in
    /// `/var/lib/fieldtrack/NAME`, NAME being the config's stem (`api.toml`, the unit
    /// `fieldtrack@api`); for `fieldtrack.toml` (the unit `fieldtrack`) `desired/desired.toml`,
    /// `.env` and `/var/lib/fieldtrack` itself; nginx's access log of the app in
    /// `/var/log/nginx/fieldtrack-APP.access.log`. Anywhere else, everything below the
    /// config's folder: `desired/desired.toml`, `.env`, `state/` (each below `STEM/` for a
    /// config named `STEM.toml`), the access log `nginx/APP-access.log` beside the snippets.
    fn new(config_path: &Path, stem: Option<&str>, app: &str) -> Places {
        let system = config_path.parent() == Some(Path::new(SYSTEM_CONFIG_DIR));
        let (data, state_dir, public_dir) = if system {
            match stem {
                Some(name) => (
                    format!("{name}/"),
                    format!("{SYSTEM_STATE_DIR}/{name}"),
                    format!("{SYSTEM_PUBLIC_DIR}/{name}"),
                ),
                // The single unit's app: its paths are fixed, so the unit can name them.
                None => (
                    String::new(),
                    SYSTEM_STATE_DIR.to_string(),
                    SYSTEM_PUBLIC_DIR.to_string(),
                ),
            }
        } else {
            let data = stem.map(|s| format!("{s}/")).unwrap_or_default();
            let state = format!("{data}state");
            let public = format!("{data}public");
            (data, state, public)
        };
        let access_log = if system {
            format!("{SYSTEM_LOG_DIR}/fieldtrack-{app}.access.log")
        } else {
            format!("nginx/{app}-access.log")
        };
        Places {
            desired_file: format!("{data}desired/desired.toml"),
            env_file: format!("{data}.env"),
            history_file: format!("{state_dir}/.deploy_history"),
            state_dir,
            public_dir,
            access_log,
        }
    }
}

/// The values the example config is rendered with.
struct Rendered<'a> {
    app: &'a str,
    repository: &'a str,
    upstream_name: &'a str,
    places: &'a Places,
    upstream_rel: &'a str,
    placeholder_repository: bool,
    blue_port: u16,
    green_port: u16,
    webhook: Option<&'a str>,
}

/// The example config with the app's values.
fn render_config(r: &Rendered<'_>) -> String {
    let Rendered { app, places, .. } = *r;
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
            format!(
                "desired_file = {}   # a folder of its own",
                toml_string(&places.desired_file)
            ),
        ),
        (
            "history_file = \".deploy_history\"",
            format!("history_file = {}", toml_string(&places.history_file)),
        ),
        (
            "state_dir = \".fieldtrack\"",
            format!("state_dir = {}", toml_string(&places.state_dir)),
        ),
        (
            "public_dir = \".fieldtrack-public\"",
            format!("public_dir = {}", toml_string(&places.public_dir)),
        ),
        ("blue_port = 3001", format!("blue_port = {}", r.blue_port)),
        (
            "green_port = 3002",
            format!("green_port = {}", r.green_port),
        ),
        (
            "env_file = \".env\"",
            format!("env_file = {}", toml_string(&places.env_file)),
        ),
        (
            "upstream_file = \"/etc/nginx/conf.d/fieldtrack-api.conf\"",
            format!(
                "upstream_file = \"{}\"   # written by fieldtrack init",
                r.upstream_rel
            ),
        ),
        (
            "upstream_name = \"fieldtrack_api\"",
            // The example has no access_log line to replace (without [canary] nothing reads
            // the log), so it follows the upstream name.
            format!(
                "upstream_name = {}\n\
                 # nginx's access log of the app, in fieldtrack's JSON log_format: `access_log PATH\n\
                 # fieldtrack;` in the location snippet fieldtrack init wrote. A [canary] step is\n\
                 # judged from it; without [canary] nothing reads it.\n\
                 access_log = {}",
                toml_string(r.upstream_name),
                toml_string(&places.access_log)
            ),
        ),
    ];
    let mut replacements = replacements;
    if let Some(url) = r.webhook {
        replacements.push((
            "# webhook = \"https://hooks.example.com/services/XXXX\"",
            format!("webhook = {}", toml_string(url)),
        ));
    }
    let mut text = format!(
        "# Written by `fieldtrack init` for the app {app:?}. Below: the reference of every key\n\
         # (also /usr/share/doc/fieldtrack/fieldtrack.toml.example), set to its default except\n\
         # the app, the repository and the paths fieldtrack init chose. Relative paths are\n\
         # relative to this file's folder. The desired file has a folder of its own: CI may\n\
         # write there, and nowhere else (docs/ci.md).\n#\n"
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
        .replace(EXAMPLE_DESIRED_DIR, &format!("{}/", desired_dir.display()));
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

/// What the `location` snippet names.
struct Location<'a> {
    app: &'a str,
    upstream_name: &'a str,
    /// The snippet's own path, for the `include` line it shows.
    path: &'a Path,
    access_log: &'a Path,
    log_format_snippet: &'a Path,
}

/// The `location` block with the proxy settings that keep a switch free of failed requests,
/// logging in fieldtrack's format.
fn render_location(l: &Location<'_>) -> String {
    let Location {
        app,
        upstream_name,
        path,
        ..
    } = *l;
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
    # Every request in fieldtrack's JSON format, what a canary step is judged from (the
    # config's nginx.access_log). The format is declared, once in http {{ }}, by
    #     {log_format}
    # An access_log here replaces those this location would inherit from server {{ }} and
    # http {{ }}: repeat yours below it to keep them.
    access_log {access_log} fieldtrack;
}}

# A preview before the switch ([rollout] promotion = "manual" in fieldtrack.toml): a new
# image that passed its health gate waits for `fieldtrack promote` in the upstream block
# {upstream_name}_preview, which fieldtrack writes into the same upstream file (naming the
# live color while no preview runs). Route it with a server of its own, never public, in
# http {{ }} beside your site's, on a port of its own or a host name. Set promotion =
# "manual" and run `fieldtrack reconcile` first (that writes the block; nginx -t fails on a
# proxy_pass to an upstream not defined), then uncomment and reload nginx:
# server {{
#     listen 127.0.0.1:8081;            # or: listen 443 ssl; server_name preview.example.com;
#     location / {{
#         proxy_pass http://{upstream_name}_preview;
#         proxy_http_version 1.1;
#         proxy_set_header Connection "";
#         proxy_set_header Host $host;
#     }}
# }}
"#,
        path = path.display(),
        access_log = l.access_log.display(),
        log_format = l.log_format_snippet.display(),
    )
}

/// The snippet declaring fieldtrack's `log_format`; the same text for every app, so that the
/// apps of one folder share it.
fn render_log_format() -> String {
    format!(
        "# Written by `fieldtrack init`: the JSON access log format fieldtrack reads to judge a\n\
         # canary step (requests, 5xx, failed tries and latency per color). Include this file once\n\
         # in nginx's http {{ }}, before the servers that log with it: nginx refuses a second\n\
         # `log_format fieldtrack`, however many apps use it. Each app's location snippet logs\n\
         # with it: `access_log PATH fieldtrack;`. fieldtrack needs the keys upstream_addr,\n\
         # status, upstream_status and request_time as strings; `fieldtrack check` verifies them.\n\
         {LOG_FORMAT}\n"
    )
}

/// The three things to do next, with the commands for this layout. `found` says the
/// config is the one `fieldtrack` finds without `--config` from here.
fn next_steps(layout: &Layout, found: bool, group: &DeployGroup) -> String {
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
    let desired_dir = layout.desired_dir.display();
    let public_dir = cfg.public_dir.display();
    let ci = match group {
        DeployGroup::Found { name, .. } => format!(
            "{desired_dir} is writable by the group {name}, and {public_dir} (what the\n\
             \x20    daemon publishes) readable by it; add CI's user to it:\n\
             \x20      usermod -aG {name} CIUSER"
        ),
        DeployGroup::Missing { name } => format!(
            "make {desired_dir} (and nothing else) writable by a group of CI's user, and\n\
             \x20    {public_dir} (what the daemon publishes) readable by it:\n\
             \x20      groupadd --system {name} && usermod -aG {name} CIUSER\n\
             \x20      chgrp {name} {desired_dir} && chmod 2775 {desired_dir}\n\
             \x20      chgrp {name} {public_dir} && chmod 2750 {public_dir}"
        ),
    };
    format!(
        "Next steps:\n\
         \x20 1. nginx: include the upstream file and the log format in the http context and\n\
         \x20    proxy your site to it. Debian's nginx.conf includes /etc/nginx/conf.d/*.conf\n\
         \x20    inside http {{ }} (before sites-enabled/), so:\n\
         \x20      echo 'include {upstream};' > /etc/nginx/conf.d/fieldtrack-{app}.conf\n\
         \x20      echo 'include {log_format};' > /etc/nginx/conf.d/fieldtrack-log-format.conf\n\
         \x20    (the log format once per host, whatever the number of apps: nginx refuses two)\n\
         \x20    and in your site's server {{ }} block (or copy its lines there):\n\
         \x20      include {location};\n\
         \x20    then: nginx -t && systemctl reload nginx\n\
         \x20 2. {check} (config, Docker, registry login, nginx, ports):\n\
         \x20      {ft} check\n\
         \x20 3. Deploy a first image and keep it converged:\n\
         \x20      {ft} deploy TAG\n\
         \x20      {daemon}\n\
         \x20 4. CI deploys as a member of the deploy group, without sudo (docs/ci.md):\n\
         \x20    `{ft} deploy TAG` waits for the result (exit 0 live, 1 failed, production\n\
         \x20    untouched); `status`, `history`, `rollback`, `promote` and `abort` work too.\n\
         \x20    {ci}",
        upstream = layout.upstream_snippet.display(),
        location = layout.location_snippet.display(),
        log_format = layout.log_format_snippet.display(),
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
fn write_all(files: &[&Planned]) -> Result<(), CliError> {
    let mut written: Vec<&Path> = Vec::new();
    for file in files {
        if let Err(e) = write_new(&file.path, &file.text, file.mode) {
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

fn write_new(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        // 0755 whatever the umask: a group-writable folder above the config would make
        // fieldtrack refuse it.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    // The mode above is filtered by the umask; a permissive umask must not make the
    // config world-writable (it would be refused), nor a strict one hide it from nginx.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
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
            places: &Places::new(Path::new("/srv/x.toml"), Some("x"), "x"),
            upstream_rel: "nginx/x.conf",
            placeholder_repository: false,
            blue_port: 4001,
            green_port: 4002,
            webhook: Some("https://hooks.example.com/x"),
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
            "# webhook = \"https://hooks.example.com/services/XXXX\"",
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
        assert_eq!(
            cfg.desired_file,
            Path::new("/srv/site/desired/desired.toml")
        );
        assert_eq!(l.desired_dir, Path::new("/srv/site/desired"));
        assert_eq!(
            cfg.history_file,
            Path::new("/srv/site/state/.deploy_history")
        );
        assert_eq!(cfg.state_dir, Path::new("/srv/site/state"));
        assert_eq!(cfg.container.env_file, Path::new("/srv/site/.env"));
        assert!(
            text.contains("desired_file = \"desired/desired.toml\""),
            "{text}"
        );
        assert!(text.contains("state_dir = \"state\""), "{text}");
        assert_eq!(l.files[0].mode, 0o644);
        assert_eq!(
            cfg.nginx.upstream_file,
            Path::new("/srv/site/nginx/web-1-upstream.conf")
        );
        assert_eq!(l.upstream_snippet, cfg.nginx.upstream_file);
        assert!(!l.placeholder_repository);
        // Beside the snippets, outside the desired file's folder.
        assert_eq!(
            cfg.nginx.access_log.as_deref(),
            Some(Path::new("/srv/site/nginx/web-1-access.log"))
        );
        assert!(
            text.contains("access_log = \"nginx/web-1-access.log\""),
            "{text}"
        );
    }

    #[test]
    fn a_config_named_after_the_app_keeps_its_files_in_a_folder_of_that_name() {
        let l = layout("/srv/apps/worker.toml", "worker", Some("ghcr.io/a/w"));
        assert_eq!(
            l.config.desired_file,
            Path::new("/srv/apps/worker/desired/desired.toml")
        );
        assert_eq!(l.config.state_dir, Path::new("/srv/apps/worker/state"));
        assert_eq!(
            l.config.container.env_file,
            Path::new("/srv/apps/worker/.env")
        );
    }

    #[test]
    fn under_etc_fieldtrack_state_goes_to_var_lib_and_the_desired_file_to_its_own_folder() {
        // The unit fieldtrack@worker: config /etc/fieldtrack/worker.toml.
        let l = layout("/etc/fieldtrack/worker.toml", "worker", Some("ghcr.io/a/w"));
        let cfg = &l.config;
        assert_eq!(
            cfg.desired_file,
            Path::new("/etc/fieldtrack/worker/desired/desired.toml")
        );
        assert_eq!(l.desired_dir, Path::new("/etc/fieldtrack/worker/desired"));
        assert_eq!(
            cfg.container.env_file,
            Path::new("/etc/fieldtrack/worker/.env")
        );
        assert_eq!(cfg.state_dir, Path::new("/var/lib/fieldtrack/worker"));
        assert_eq!(
            cfg.history_file,
            Path::new("/var/lib/fieldtrack/worker/.deploy_history")
        );
        assert_eq!(
            cfg.nginx.upstream_file,
            Path::new("/etc/fieldtrack/nginx/worker-upstream.conf")
        );
        // nginx's log folder, rotated by Debian's logrotate (/var/log/nginx/*.log).
        assert_eq!(
            cfg.nginx.access_log.as_deref(),
            Some(Path::new("/var/log/nginx/fieldtrack-worker.access.log"))
        );
        // The unit fieldtrack: config /etc/fieldtrack/fieldtrack.toml, fixed paths the unit
        // names, whatever the app.
        let l = layout(
            "/etc/fieldtrack/fieldtrack.toml",
            "shop",
            Some("ghcr.io/a/s"),
        );
        assert_eq!(
            l.config.desired_file,
            Path::new("/etc/fieldtrack/desired/desired.toml")
        );
        assert_eq!(l.config.state_dir, Path::new("/var/lib/fieldtrack"));
        // Nothing but the desired file in its folder.
        for other in [
            &l.config.path,
            &l.config.container.env_file,
            &l.config.history_file,
            &l.config.state_dir,
            &l.config.nginx.upstream_file,
        ] {
            assert!(!other.starts_with(&l.desired_dir), "{}", other.display());
        }
    }

    #[test]
    fn next_steps_name_the_unit_and_how_ci_gets_the_desired_folder() {
        let l = layout("/etc/fieldtrack/worker.toml", "worker", Some("ghcr.io/a/w"));
        let missing = DeployGroup::Missing {
            name: DEPLOY_GROUP.into(),
        };
        let steps = next_steps(&l, false, &missing);
        assert!(
            steps.contains(
                "chgrp fieldtrack-deploy /etc/fieldtrack/worker/desired && chmod 2775 \
                 /etc/fieldtrack/worker/desired"
            ),
            "{steps}"
        );
        assert!(
            steps.contains("groupadd --system fieldtrack-deploy"),
            "{steps}"
        );
        let found = DeployGroup::Found {
            name: "ci".into(),
            gid: 1001,
        };
        let steps = next_steps(&l, false, &found);
        assert!(steps.contains("usermod -aG ci CIUSER"), "{steps}");
        assert!(!steps.contains("chmod 2775"), "{steps}");
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
            crate::nginx_conf::upstream::parse_port(&l.files[2].text, "fieldtrack_worker"),
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
        assert!(
            text.contains(
                "ssh host mv /srv/site/desired/.desired.toml.tmp /srv/site/desired/desired.toml"
            ),
            "{text}"
        );
        // Uncommenting the image line is all it takes.
        let fixed = text.replace("# image = \"a4f91c2\"", "image = \"a4f91c2\"");
        let d = Desired::parse(&fixed, &l.config.desired_file, &l.config).unwrap();
        assert_eq!(d.image.to_string(), "a4f91c2");
        assert!(!d.paused && d.note.is_none());
    }

    #[test]
    fn the_location_logs_in_fieldtracks_format_declared_by_a_snippet_of_its_own() {
        let l = layout("/srv/site/fieldtrack.toml", "api", Some("ghcr.io/acme/api"));
        let location = &l.files[3].text;
        assert!(
            location.contains("\n    access_log /srv/site/nginx/api-access.log fieldtrack;\n"),
            "{location}"
        );
        let format = &l.files[4];
        assert_eq!(
            format.path,
            Path::new("/srv/site/nginx/fieldtrack-log-format.conf")
        );
        assert_eq!(format.path, l.log_format_snippet);
        assert!(format.shared);
        assert!(
            format.text.lines().any(|line| line == LOG_FORMAT),
            "{}",
            format.text
        );
        // Not in the upstream file: fieldtrack rewrites it whole at every switch.
        assert!(!l.files[2].text.contains("log_format"));
        // Every app of the folder writes the same snippet, so they can share it.
        let other = layout("/srv/site/worker.toml", "worker", Some("ghcr.io/acme/w"));
        assert_eq!(other.files[4], l.files[4]);
        assert!(other.files[3]
            .text
            .contains("/srv/site/nginx/worker-access.log fieldtrack;"));

        let steps = next_steps(
            &l,
            true,
            &DeployGroup::Missing {
                name: DEPLOY_GROUP.into(),
            },
        );
        assert!(
            steps.contains(
                "echo 'include /srv/site/nginx/fieldtrack-log-format.conf;' > \
                 /etc/nginx/conf.d/fieldtrack-log-format.conf"
            ),
            "{steps}"
        );
    }

    #[test]
    fn a_shared_file_already_there_with_the_same_text_is_kept_anything_else_refused() {
        let dir = tempfile::tempdir().unwrap();
        let planned = |name: &str, shared: bool| Planned {
            path: dir.path().join(name),
            text: render_log_format(),
            what: String::new(),
            mode: FILE_MODE,
            shared,
        };
        let same = planned("same.conf", true);
        assert!(!same.already_there(), "missing");
        fs::write(&same.path, &same.text).unwrap();
        assert!(same.already_there());
        let other = planned("other.conf", true);
        fs::write(&other.path, format!("{}# mine\n", other.text)).unwrap();
        assert!(!other.already_there());
        let own = planned("same.conf", false);
        assert!(!own.already_there(), "only a shared file is kept");
        let link = planned("link.conf", true);
        std::os::unix::fs::symlink(&same.path, &link.path).unwrap();
        assert!(
            !link.already_there(),
            "a symlink is not the file init writes"
        );
    }

    #[test]
    fn nginx_snippets_point_at_the_upstream_name_and_blue() {
        let l = layout("/srv/site/fieldtrack.toml", "api", Some("ghcr.io/acme/api"));
        let upstream = &l.files[2].text;
        assert_eq!(
            crate::nginx_conf::upstream::parse_port(upstream, "fieldtrack_api"),
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
        // The preview's route, commented: the config init writes promotes automatically.
        assert!(
            location.contains("#         proxy_pass http://fieldtrack_api_preview;"),
            "{location}"
        );
    }

    #[test]
    fn without_a_repository_a_placeholder_is_written_and_named_in_the_next_steps() {
        let l = layout("/etc/fieldtrack/fieldtrack.toml", "api", None);
        assert_eq!(l.config.repository, "registry.example.com/api");
        assert!(l.placeholder_repository);
        let steps = next_steps(
            &l,
            true,
            &DeployGroup::Missing {
                name: DEPLOY_GROUP.into(),
            },
        );
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
    fn a_webhook_goes_into_the_config_which_is_then_private() {
        let mut c = choices(Some("api"), Some("ghcr.io/acme/api"));
        c.webhook = Some("https://hooks.example.com/services/T0/SECRET".into());
        let l = plan(Path::new("/srv/site/fieldtrack.toml"), &c).unwrap();
        assert_eq!(
            l.config.notify.webhook.as_ref().map(|u| u.as_str()),
            Some("https://hooks.example.com/services/T0/SECRET")
        );
        assert_eq!(l.files[0].mode, 0o600);
        assert!(l.files[1..].iter().all(|f| f.mode == 0o644));
        // Checked by the config's own rule, and never repeated in the error.
        c.webhook = Some("ftp://x/SECRET".into());
        let err = plan(Path::new("/srv/site/fieldtrack.toml"), &c).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("notify.webhook"), "{err}");
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn a_config_file_name_cannot_inject_keys() {
        let path = Path::new("/srv/x\"\nhooks = 1\n#.toml");
        let l = plan(path, &choices(Some("api"), Some("ghcr.io/acme/api"))).unwrap();
        assert!(l.config.hooks.pre_switch.is_empty());
        assert!(l.config.desired_file.starts_with("/srv/x\"\nhooks = 1\n#/"));
    }

    #[test]
    fn quotes_in_values_cannot_break_out_of_the_toml_string() {
        // Refused by the rules anyway; the point is that it is refused, not injected.
        let bad = choices(Some("api\"\nx = \"1"), None);
        let err = plan(Path::new("/x/fieldtrack.toml"), &bad).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
    }
}
