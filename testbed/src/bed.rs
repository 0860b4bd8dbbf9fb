//! The shared part of the bed: packages, the Docker engine, the registry and the test images.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::util::{self, err, BedError, Result};

/// Every tag the bed builds; the tag fixes the app's behaviour (see `testbed/app`).
pub const TAGS: &[&str] = &[
    "v1",
    "v2",
    "v3",
    "v4",
    "v5",
    "v6",
    "v7",
    "v8",
    "v9",
    "unhealthy",
    "crash",
    "slow",
    "flaky",
    "ready1s",
    "err5",
    "lag",
];

/// The repository path of the test images inside the bed's registry.
const IMAGE_PATH: &str = "fieldtrack-test/app";

/// Debian packages the bed needs, each with a program that tells whether it is there.
const PACKAGES: &[(&str, &str)] = &[
    ("dockerd", "docker.io"),
    ("docker", "docker.io"),
    ("nginx", "nginx"),
    ("docker-registry", "docker-registry"),
    ("cc", "gcc"),
    ("systemd-analyze", "systemd"),
    ("htpasswd", "apache2-utils"),
    // The Docker API behind mutual TLS (tests/integration/swarm.rs): certificates, and nginx's stream
    // module as the TLS front of the manager's socket. (A path: a file, not a program.)
    ("openssl", "openssl"),
    (
        "/usr/lib/nginx/modules/ngx_stream_module.so",
        "libnginx-mod-stream",
    ),
    // The SMTP server of the email tests (testbed/src/smtp.rs), for Debian's python3.
    (
        "/usr/lib/python3/dist-packages/aiosmtpd/__init__.py",
        "python3-aiosmtpd",
    ),
];

/// The repository path of the test images in the private registry.
const PRIVATE_IMAGE_PATH: &str = "private/app";
/// The tags copied into the private registry.
const PRIVATE_TAGS: &[&str] = &["v1", "v2"];
/// The one user of the private registry; a loopback test registry needs no secret password.
pub const PRIVATE_USER: &str = "fieldtrack";
pub const PRIVATE_PASSWORD: &str = "testbed-password";

/// A running bed. Cheap to clone; everything in it is a name or an address.
#[derive(Debug, Clone)]
pub struct Bed {
    /// Where the bed keeps its engine data, registry storage, logs and sites.
    pub dir: PathBuf,
    /// The fieldtrack workspace (to build the test app).
    pub workspace: PathBuf,
    /// `DOCKER_HOST` of the engine in use, e.g. `unix:///var/tmp/fieldtrack-testbed/docker.sock`.
    pub docker_host: String,
    /// `127.0.0.1:PORT` of the registry.
    pub registry: String,
    /// The test images' repository, `127.0.0.1:PORT/fieldtrack-test/app`.
    pub repository: String,
    /// Absolute path of the nginx binary.
    pub nginx: PathBuf,
    /// `127.0.0.1:PORT` of the second registry, which wants a login (htpasswd): pulls without
    /// credentials, or with wrong ones, are refused.
    pub private_registry: String,
    /// `127.0.0.1:PORT/private/app`, holding `v1` and `v2` of the test images.
    pub private_repository: String,
    /// The user and password the private registry accepts.
    pub private_user: String,
    pub private_password: String,
}

impl Bed {
    /// The folder the bed lives in: `$FIELDTRACK_TESTBED_DIR`, else `/var/tmp/fieldtrack-testbed`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("FIELDTRACK_TESTBED_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/fieldtrack-testbed"))
    }

    /// The bed for this test process, brought up once. Every test that needs the real engine
    /// calls this; when the bed cannot come up the test fails with the reason, it never skips.
    pub fn shared() -> &'static Bed {
        static BED: OnceLock<std::result::Result<Bed, String>> = OnceLock::new();
        match BED.get_or_init(|| Bed::up().map_err(|e| e.to_string())) {
            Ok(bed) => bed,
            Err(e) => panic!("the test bed (Docker engine, registry, nginx) is not up: {e}"),
        }
    }

    /// Brings everything up, idempotently. Holds a lock so concurrent callers take turns.
    pub fn up() -> Result<Bed> {
        let dir = Self::default_dir();
        fs::create_dir_all(dir.join("sites"))
            .map_err(|e| BedError(format!("cannot create {}: {e}", dir.display())))?;
        let _lock = Flock::take(&dir.join("lock"))?;
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("testbed lives inside the workspace")
            .to_path_buf();

        install_packages(PACKAGES)?;
        let nginx = which("nginx").ok_or_else(|| BedError("nginx is not on PATH".into()))?;
        let docker_host = engine(&dir)?;
        let registry = registry(&dir)?;
        let private_registry = private_registry(&dir)?;
        let bed = Bed {
            repository: format!("{registry}/{IMAGE_PATH}"),
            private_repository: format!("{private_registry}/{PRIVATE_IMAGE_PATH}"),
            dir,
            workspace,
            docker_host,
            registry,
            nginx,
            private_registry,
            private_user: PRIVATE_USER.to_string(),
            private_password: PRIVATE_PASSWORD.to_string(),
        };
        crate::site::sweep(&bed);
        bed.images()?;
        bed.private_images()?;
        Ok(bed)
    }

    /// Stops what the bed started (sites, registry, our own dockerd). A system engine is left.
    pub fn down() -> Result<()> {
        let dir = Self::default_dir();
        if !dir.exists() {
            return Ok(());
        }
        let _lock = Flock::take(&dir.join("lock"))?;
        let host = format!("unix://{}", dir.join("docker.sock").display());
        crate::site::sweep_all(&dir, &host);
        for pid_file in ["registry.pid", "private-registry.pid"] {
            if let Some(pid) = util::read_pid(&dir.join(pid_file)) {
                util::stop_pid(pid, libc::SIGTERM, Duration::from_secs(5));
            }
        }
        stop_own_engine(&dir);
        Ok(())
    }

    /// A `docker` command aimed at the bed's engine.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.docker_host);
        cmd
    }

    /// The full reference of a test image, e.g. `127.0.0.1:5000/fieldtrack-test/app:v1`.
    pub fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.repository)
    }

    /// Copies an existing tag to a new one in the registry (same behaviour, new name), for
    /// tests that need a tag nobody has pulled yet.
    pub fn push_alias(&self, tag: &str, alias: &str) -> Result<String> {
        let (from, to) = (self.image(tag), self.image(alias));
        util::run(self.docker().args(["pull", "-q", &from]))?;
        util::run(self.docker().args(["tag", &from, &to]))?;
        util::run(self.docker().args(["push", "-q", &to]))?;
        util::run(self.docker().args(["rmi", &to]))?;
        Ok(to)
    }

    /// Copies a tag into another repository of the bed's registry (`fieldtrack-test/NAME`),
    /// for tests that need a repository of their own (image retention removes images of
    /// the configured repository). Returns the new repository.
    pub fn push_to_repository(&self, tag: &str, name: &str, new_tag: &str) -> Result<String> {
        let repository = format!("{}/fieldtrack-test/{name}", self.registry);
        let (from, to) = (self.image(tag), format!("{repository}:{new_tag}"));
        util::run(self.docker().args(["pull", "-q", &from]))?;
        util::run(self.docker().args(["tag", &from, &to]))?;
        util::run(self.docker().args(["push", "-q", &to]))?;
        util::run(self.docker().args(["rmi", &to]))?;
        Ok(repository)
    }

    /// Copies `v1` and `v2` into a repository of the private registry of its own
    /// (`private/NAME`), for tests that need tags nobody has pulled yet. Returns the new
    /// repository. The local copies are removed, so that a deploy really pulls.
    pub fn push_private(&self, name: &str) -> Result<String> {
        let repository = format!("{}/private/{name}", self.private_registry);
        self.copy_to_private(&repository)?;
        Ok(repository)
    }

    /// Writes `DIR/config.json` as `docker login` would, holding `user:password` for the
    /// private registry; `DOCKER_CONFIG=DIR` then makes fieldtrack (and the docker CLI) use it.
    pub fn write_private_login(&self, dir: &Path, user: &str, password: &str) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| BedError(format!("{}: {e}", dir.display())))?;
        let auth = util::base64(format!("{user}:{password}").as_bytes());
        let config = format!(
            "{{\n  \"auths\": {{\n    \"{}\": {{ \"auth\": \"{auth}\" }}\n  }}\n}}\n",
            self.private_registry
        );
        let path = dir.join("config.json");
        fs::write(&path, config).map_err(|e| BedError(format!("{}: {e}", path.display())))
    }

    /// Lines of `KEY=value` describing the bed, for scripts (`eval "$(testbed up)"`).
    pub fn env_lines(&self) -> String {
        format!(
            "export DOCKER_HOST={}\nexport FIELDTRACK_TEST_REGISTRY={}\nexport FIELDTRACK_TEST_REPOSITORY={}\nexport FIELDTRACK_TEST_PRIVATE_REGISTRY={}\nexport FIELDTRACK_TEST_PRIVATE_REPOSITORY={}\nexport FIELDTRACK_TEST_PRIVATE_USER={}\nexport FIELDTRACK_TEST_PRIVATE_PASSWORD={}\nexport FIELDTRACK_TESTBED_DIR={}\n",
            self.docker_host,
            self.registry,
            self.repository,
            self.private_registry,
            self.private_repository,
            self.private_user,
            self.private_password,
            self.dir.display()
        )
    }

    /// Copies the public `PRIVATE_TAGS` into the private registry unless it holds them,
    /// copied from the public images as they are now (the stamp of `images`).
    fn private_images(&self) -> Result<()> {
        let stamp = fs::read_to_string(self.dir.join("images.stamp")).unwrap_or_default();
        let stamp_file = self.dir.join("private-images.stamp");
        let registry: SocketAddr = self.private_registry.parse().expect("registry is ip:port");
        let listed = util::http_get_auth(
            registry,
            &format!("/v2/{PRIVATE_IMAGE_PATH}/tags/list"),
            Some((&self.private_user, &self.private_password)),
            Duration::from_secs(5),
        )
        .map(|(_, body)| body)
        .unwrap_or_default();
        let all_there = PRIVATE_TAGS
            .iter()
            .all(|t| listed.contains(&format!("\"{t}\"")));
        if all_there && fs::read_to_string(&stamp_file).ok() == Some(stamp.clone()) {
            return Ok(());
        }
        eprintln!(
            "testbed: pushing {} to the private registry",
            PRIVATE_TAGS.join(" ")
        );
        self.copy_to_private(&self.private_repository)?;
        fs::write(&stamp_file, stamp)
            .map_err(|e| BedError(format!("cannot write {}: {e}", stamp_file.display())))
    }

    /// Pushes `PRIVATE_TAGS` to `repository` in the private registry and removes every local
    /// copy. Each is the public tag with a label naming `repository`: an image (and digest)
    /// of its own, so that removing it locally really makes the next pull go to the registry
    /// (layers are shared, so this costs no space). The push logs in through a Docker config
    /// of the bed's own, so no login is left where a test or fieldtrack would find it.
    fn copy_to_private(&self, repository: &str) -> Result<()> {
        let login = self.dir.join("private-docker-config");
        self.write_private_login(&login, &self.private_user, &self.private_password)?;
        let context = self.dir.join("build-private");
        let dockerfile = context.join("Dockerfile");
        if !dockerfile.exists() {
            // Written once, by rename, so a concurrent build never reads half a file.
            fs::create_dir_all(&context)
                .map_err(|e| BedError(format!("{}: {e}", context.display())))?;
            let temp = context.join(format!("Dockerfile.{}", std::process::id()));
            fs::write(&temp, "ARG FROM\nFROM ${FROM}\n")
                .and_then(|_| fs::rename(&temp, &dockerfile))
                .map_err(|e| BedError(format!("{}: {e}", dockerfile.display())))?;
        }
        for tag in PRIVATE_TAGS {
            let (from, to) = (self.image(tag), format!("{repository}:{tag}"));
            util::run(self.docker().args(["pull", "-q", &from]))?;
            util::run(
                self.docker()
                    .env("DOCKER_BUILDKIT", "0")
                    .args(["build", "-q", "--build-arg"])
                    .arg(format!("FROM={from}"))
                    .arg("--label")
                    .arg(format!("fieldtrack.testbed.repository={repository}"))
                    .args(["-t", &to])
                    .arg(&context),
            )?;
            util::run(
                self.docker()
                    .env("DOCKER_CONFIG", &login)
                    .args(["push", "-q", &to]),
            )?;
            util::run(self.docker().args(["rmi", &to]))?;
        }
        Ok(())
    }

    /// Builds, pushes and removes locally the test images, unless the registry already holds
    /// every tag built from the current sources.
    fn images(&self) -> Result<()> {
        let app = self.workspace.join("testbed/app");
        let mut fingerprint = util::FNV_OFFSET;
        for file in ["Cargo.toml", "Dockerfile", "src/main.rs"] {
            let bytes = fs::read(app.join(file))
                .map_err(|e| BedError(format!("cannot read {}: {e}", app.join(file).display())))?;
            fingerprint = util::fnv1a(fingerprint, &bytes);
        }
        fingerprint = util::fnv1a(fingerprint, TAGS.join(",").as_bytes());
        let stamp = format!("{fingerprint:016x}");
        let stamp_file = self.dir.join("images.stamp");
        let registry: SocketAddr = self.registry.parse().expect("registry is ip:port");
        let listed = util::http_get(
            registry,
            &format!("/v2/{IMAGE_PATH}/tags/list"),
            Duration::from_secs(5),
        )
        .map(|(_, body)| body)
        .unwrap_or_default();
        let all_there = TAGS.iter().all(|t| listed.contains(&format!("\"{t}\"")));
        if all_there && fs::read_to_string(&stamp_file).ok().as_deref() == Some(stamp.as_str()) {
            return Ok(());
        }

        eprintln!("testbed: building the test images ({})", TAGS.join(" "));
        let binary = self.build_app()?;
        let context = self.dir.join("build");
        fs::create_dir_all(&context)
            .map_err(|e| BedError(format!("{}: {e}", context.display())))?;
        fs::copy(&binary, context.join("testapp"))
            .and_then(|_| fs::copy(app.join("Dockerfile"), context.join("Dockerfile")))
            .map_err(|e| BedError(format!("cannot prepare {}: {e}", context.display())))?;
        for tag in TAGS {
            let image = self.image(tag);
            util::run(
                self.docker()
                    .env("DOCKER_BUILDKIT", "0")
                    .args(["build", "-q", "--build-arg"])
                    .arg(format!("TAG={tag}"))
                    .args(["-t", &image])
                    .arg(&context),
            )?;
            util::run(self.docker().args(["push", "-q", &image]))?;
        }
        // Local copies go, so that a deploy really pulls from the registry.
        for tag in TAGS {
            util::run(self.docker().args(["rmi", &self.image(tag)]))?;
        }
        fs::write(&stamp_file, stamp)
            .map_err(|e| BedError(format!("cannot write {}: {e}", stamp_file.display())))?;
        Ok(())
    }

    /// Builds the test app as a static binary (no libc needed in a `FROM scratch` image).
    fn build_app(&self) -> Result<PathBuf> {
        let host = util::run(Command::new("rustc").arg("-vV"))?
            .lines()
            .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
            .ok_or_else(|| BedError("rustc -vV names no host target".into()))?;
        let target_dir = self.workspace.join("target/testapp");
        util::run(
            Command::new("cargo")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .args([
                    "build",
                    "--quiet",
                    "--release",
                    "--target",
                    &host,
                    "--manifest-path",
                ])
                .arg(self.workspace.join("testbed/app/Cargo.toml"))
                .arg("--target-dir")
                .arg(&target_dir),
        )?;
        Ok(target_dir.join(host).join("release/fieldtrack-testapp"))
    }
}

/// Installs, from Debian's packages, each package whose program (or file, for a path) is
/// missing, quietly; says which and why when it fails.
pub(crate) fn install_packages(packages: &[(&str, &str)]) -> Result<()> {
    let mut missing: Vec<&str> = packages
        .iter()
        .filter(|(program, _)| match program.strip_prefix('/') {
            Some(_) => !Path::new(program).exists(),
            None => which(program).is_none(),
        })
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !util::have("apt-get") {
        return err(format!(
            "missing {} and no apt-get to install them",
            missing.join(" ")
        ));
    }
    eprintln!(
        "testbed: installing {} from Debian's packages",
        missing.join(" ")
    );
    let install = || {
        util::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )
    };
    if install().is_err() {
        // A fresh machine has no package lists yet.
        util::run(Command::new("apt-get").args(["update", "-q"]))?;
        install().map_err(|e| BedError(format!("cannot install {}: {e}", missing.join(" "))))?;
    }
    Ok(())
}

/// Finds a program on PATH or in the sbin folders, which a non-login PATH may lack.
pub(crate) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub(crate) fn docker_answers(host: &str) -> std::result::Result<(), String> {
    let out = Command::new("timeout")
        .args(["20", "docker", "version", "--format", "{{.Server.Version}}"])
        .env("DOCKER_HOST", host)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(util::last_lines(&String::from_utf8_lossy(&out.stderr), 5))
    }
}

/// The engine to use: `$DOCKER_HOST` when set, else ours if running, else the system one,
/// else a dockerd of our own on its own socket, data root and exec root.
fn engine(dir: &Path) -> Result<String> {
    if let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) {
        return match docker_answers(&host) {
            Ok(()) => Ok(host),
            Err(e) => err(format!(
                "DOCKER_HOST={host} is set but no Docker engine answers there: {e}"
            )),
        };
    }
    let own = format!("unix://{}", dir.join("docker.sock").display());
    if docker_answers(&own).is_ok() {
        return Ok(own);
    }
    let system = "unix:///var/run/docker.sock";
    if Path::new("/var/run/docker.sock").exists() && docker_answers(system).is_ok() {
        return Ok(system.to_string());
    }

    stop_own_engine(dir);
    let _ = fs::remove_file(dir.join("docker.sock"));
    let log = dir.join("dockerd.log");
    let dockerd = which("dockerd").ok_or_else(|| BedError("dockerd is not installed".into()))?;
    eprintln!("testbed: starting dockerd on {own}");
    let mut child = spawn_detached(
        Command::new(dockerd)
            .arg("--data-root")
            .arg(dir.join("docker"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .args(["-H", &own]),
        &log,
    )?;
    let mut last = String::new();
    let ready = util::wait_until(Duration::from_secs(90), || {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        match docker_answers(&own) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    });
    if let Ok(Some(status)) = child.try_wait() {
        return err(format!(
            "dockerd exited ({status}) while starting; last lines of {}:\n{}",
            log.display(),
            util::tail_file(&log, 30)
        ));
    }
    if !ready {
        return err(format!(
            "dockerd did not answer on {own} within 90 s ({last}); last lines of {}:\n{}",
            log.display(),
            util::tail_file(&log, 30)
        ));
    }
    Ok(own)
}

/// Stops a dockerd the bed started earlier (and its containerd), by their pid files.
fn stop_own_engine(dir: &Path) {
    if let Some(pid) = util::read_pid(&dir.join("dockerd.pid")) {
        util::stop_pid(pid, libc::SIGTERM, Duration::from_secs(20));
    }
    if let Some(pid) = util::read_pid(&dir.join("exec/containerd/containerd.pid")) {
        util::stop_pid(pid, libc::SIGTERM, Duration::from_secs(10));
    }
}

/// The registry: reused when it answers, else started on a free loopback port (the one used
/// last time when it is still free, so image names stay stable).
fn registry(dir: &Path) -> Result<String> {
    let pid_file = dir.join("registry.pid");
    let port_file = dir.join("registry.port");
    let previous: Option<u16> = fs::read_to_string(&port_file)
        .ok()
        .and_then(|p| p.trim().parse().ok());
    if let (Some(pid), Some(port)) = (util::read_pid(&pid_file), previous) {
        if util::pid_alive(pid) && registry_answers(port) {
            return Ok(format!("127.0.0.1:{port}"));
        }
        util::stop_pid(pid, libc::SIGTERM, Duration::from_secs(5));
    }
    let port = match previous {
        Some(p) if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() => p,
        _ => util::free_ports(1)?[0],
    };
    let config = dir.join("registry.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("registry-data").display()
        ),
    )
    .map_err(|e| BedError(format!("cannot write {}: {e}", config.display())))?;
    let program = which("docker-registry")
        .ok_or_else(|| BedError("docker-registry is not installed".into()))?;
    let log = dir.join("registry.log");
    let mut child = spawn_detached(Command::new(program).arg("serve").arg(&config), &log)?;
    fs::write(&pid_file, child.id().to_string())
        .and_then(|_| fs::write(&port_file, port.to_string()))
        .map_err(|e| BedError(format!("cannot write {}: {e}", pid_file.display())))?;
    let ready = util::wait_until(Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(Some(_))) || registry_answers(port)
    });
    if !ready || matches!(child.try_wait(), Ok(Some(_))) {
        return err(format!(
            "the registry did not answer on 127.0.0.1:{port}; last lines of {}:\n{}",
            log.display(),
            util::tail_file(&log, 30)
        ));
    }
    Ok(format!("127.0.0.1:{port}"))
}

/// The private registry: like [`registry`], with htpasswd auth (bcrypt, `htpasswd -B`), its
/// own port, storage and pid file.
fn private_registry(dir: &Path) -> Result<String> {
    let pid_file = dir.join("private-registry.pid");
    let port_file = dir.join("private-registry.port");
    let previous: Option<u16> = fs::read_to_string(&port_file)
        .ok()
        .and_then(|p| p.trim().parse().ok());
    if let (Some(pid), Some(port)) = (util::read_pid(&pid_file), previous) {
        if util::pid_alive(pid) && private_registry_answers(port) {
            return Ok(format!("127.0.0.1:{port}"));
        }
        util::stop_pid(pid, libc::SIGTERM, Duration::from_secs(5));
    }
    let port = match previous {
        Some(p) if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() => p,
        _ => util::free_ports(1)?[0],
    };
    let htpasswd = dir.join("private-registry.htpasswd");
    let line = util::run(
        Command::new(
            which("htpasswd").ok_or_else(|| BedError("htpasswd is not installed".into()))?,
        )
        .args(["-n", "-b", "-B", PRIVATE_USER, PRIVATE_PASSWORD]),
    )?;
    fs::write(&htpasswd, line.trim())
        .map_err(|e| BedError(format!("cannot write {}: {e}", htpasswd.display())))?;
    let config = dir.join("private-registry.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nauth:\n  htpasswd:\n    realm: fieldtrack-testbed\n    path: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("private-registry-data").display(),
            htpasswd.display()
        ),
    )
    .map_err(|e| BedError(format!("cannot write {}: {e}", config.display())))?;
    let program = which("docker-registry")
        .ok_or_else(|| BedError("docker-registry is not installed".into()))?;
    let log = dir.join("private-registry.log");
    let mut child = spawn_detached(Command::new(program).arg("serve").arg(&config), &log)?;
    fs::write(&pid_file, child.id().to_string())
        .and_then(|_| fs::write(&port_file, port.to_string()))
        .map_err(|e| BedError(format!("cannot write {}: {e}", pid_file.display())))?;
    let ready = util::wait_until(Duration::from_secs(30), || {
        matches!(child.try_wait(), Ok(Some(_))) || private_registry_answers(port)
    });
    if !ready || matches!(child.try_wait(), Ok(Some(_))) {
        return err(format!(
            "the private registry did not answer on 127.0.0.1:{port}; last lines of {}:\n{}",
            log.display(),
            util::tail_file(&log, 30)
        ));
    }
    Ok(format!("127.0.0.1:{port}"))
}

/// The private registry answers `/v2/` with 401 to a client without credentials, and 200 to
/// one with the right ones.
fn private_registry_answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    matches!(
        util::http_get(addr, "/v2/", Duration::from_secs(2)),
        Ok((401, _))
    ) && matches!(
        util::http_get_auth(
            addr,
            "/v2/",
            Some((PRIVATE_USER, PRIVATE_PASSWORD)),
            Duration::from_secs(2)
        ),
        Ok((200, _))
    )
}

fn registry_answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    matches!(
        util::http_get(addr, "/v2/", Duration::from_secs(2)),
        Ok((200, _))
    )
}

/// Starts a long-lived service in its own session, output appended to `log`.
pub(crate) fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<std::process::Child> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| BedError(format!("cannot open {}: {e}", log.display())))?;
    let err_out = out
        .try_clone()
        .map_err(|e| BedError(format!("cannot open {}: {e}", log.display())))?;
    // SAFETY: setsid is async-signal-safe; it detaches the service from our terminal and
    // process group, so a test runner's Ctrl-C does not take the shared engine down with it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err_out)
        .spawn()
        .map_err(|e| BedError(format!("cannot start {cmd:?}: {e}")))
}

/// An exclusive `flock` held until dropped.
#[derive(Debug)]
pub(crate) struct Flock(fs::File);

impl Flock {
    /// [`Flock::take`] without waiting: None when another holds it.
    pub(crate) fn try_take(path: &Path) -> Result<Option<Flock>> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| BedError(format!("cannot open {}: {e}", path.display())))?;
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(Flock(file)));
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            e => err(format!("cannot lock {}: {e}", path.display())),
        }
    }

    pub(crate) fn take(path: &Path) -> Result<Flock> {
        use std::os::fd::AsRawFd;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| BedError(format!("cannot open {}: {e}", path.display())))?;
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return err(format!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Flock(file))
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}
