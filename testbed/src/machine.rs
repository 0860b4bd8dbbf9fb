//! The production bed: a real Debian 12 booted with its own systemd, for the tests that
//! must see what an operator's server does (tests/integration/production.rs): the .deb installed with
//! apt, `fieldtrack init`'s steps followed, the unit enabled, CI's user reached over ssh.
//!
//! The root file system is made once with debootstrap, from the mirror this machine's apt
//! already uses, and cached (`/var/tmp/fieldtrack-machine/rootfs`, built beside it and
//! renamed, so a half-made one is never booted). Each [`Machine::boot_fresh`] boots a copy
//! of it with `systemd-nspawn --boot --register=no --keep-unit`: no machined here, and
//! `--keep-unit` asks no host systemd for a scope. The machine shares this host's network
//! namespace, so its nginx, its sshd and the app's containers (run by the bed's engine,
//! whose socket is bound in as /run/docker.sock) all meet on loopback; its ports come from
//! a range of its own (see [`MACHINE_PORTS`]). Commands run inside with `nsenter -t INIT -a`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::bed::{install_packages, Flock};
use crate::util::{self, err, BedError, Result};
use crate::Bed;

/// The Debian release the machine runs.
const SUITE: &str = "bookworm";

/// What the root file system holds beyond debootstrap's minimal base: an init, the bus
/// systemctl talks over, the web server and the ssh server an operator's VPS has, sudo;
/// apt (in the base) installs the .deb.
const INCLUDE: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "nginx",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "procps",
];

/// Host programs the bed needs, with the Debian packages that ship them.
const HOST_PACKAGES: &[(&str, &str)] = &[
    ("debootstrap", "debootstrap"),
    ("systemd-nspawn", "systemd-container"),
    ("nsenter", "util-linux"),
    ("ssh", "openssh-client"),
    ("scp", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
];

/// The PATH of commands run inside: root's, as on a Debian server.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The machine's ports: below the range the other beds take theirs from
/// (`util::free_ports`, 10000 up to the kernel's ephemeral range, where outgoing connections
/// take theirs), cut into slots of [`SLOT_PORTS`]. A machine holds a `flock` on its slot's
/// file for its life, so two test processes never share one; a port some other program
/// listens on makes the slot skipped.
pub const MACHINE_PORTS: std::ops::Range<u16> = 9_000..10_000;
/// Where the slots' lock files are: one place whatever `$FIELDTRACK_MACHINE_DIR` says, so
/// machines of different folders do not share ports either.
const SLOT_LOCKS: &str = "/var/tmp/fieldtrack-machine-ports";
/// Ports in a slot: sshd's first, then [`Machine::ports`] for the test (site, colors).
const SLOT_PORTS: u16 = 8;

/// How long a boot may take until systemd says the system runs (it takes about a second).
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How long an orderly poweroff may take before the machine is killed.
const POWEROFF_LIMIT: Duration = Duration::from_secs(60);

/// A booted machine. Powered off when dropped; [`Machine::remove`] also deletes its copy.
#[derive(Debug)]
pub struct Machine {
    /// The run's folder: `root/` (the booted copy), `console.log`, `owner.pid`.
    pub dir: PathBuf,
    /// The machine's root file system, as this host sees it.
    pub root: PathBuf,
    /// sshd listens on 127.0.0.1:ssh_port.
    pub ssh_port: u16,
    /// Loopback ports no other machine or bed takes while this one lives: the test's to
    /// give the app's site and colors.
    pub ports: Vec<u16>,
    /// The `flock` that keeps [`Machine::ports`] (and ssh_port) this machine's.
    _slot: Flock,
    /// The host path of the bed's Docker socket, bound in as /run/docker.sock.
    docker_socket: PathBuf,
    nspawn: Option<Child>,
    /// The machine's init (systemd), as this host numbers it.
    init: i32,
}

impl Machine {
    /// The folder of the cached root file system and of the runs:
    /// `$FIELDTRACK_MACHINE_DIR`, else `/var/tmp/fieldtrack-machine`.
    pub fn default_dir() -> PathBuf {
        std::env::var_os("FIELDTRACK_MACHINE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/fieldtrack-machine"))
    }

    /// The cached root file system, made now when there is none (about a minute). Holds a
    /// lock, so concurrent callers wait for one debootstrap.
    pub fn rootfs() -> Result<PathBuf> {
        let dir = Self::default_dir();
        fs::create_dir_all(dir.join("runs"))
            .map_err(|e| BedError(format!("cannot create {}: {e}", dir.display())))?;
        let _lock = Flock::take(&dir.join("lock"))?;
        let root = dir.join("rootfs");
        if root.is_dir() {
            return Ok(root);
        }
        install_packages(HOST_PACKAGES)?;
        let mirror = host_mirror()?;
        let tmp = dir.join(format!("rootfs.tmp-{}", std::process::id()));
        remove_leftovers(&dir);
        eprintln!("testbed: making the machine's root file system ({SUITE}, {mirror})");
        let started = Instant::now();
        util::run(
            Command::new("debootstrap")
                .args([
                    "--variant=minbase",
                    &format!("--include={}", INCLUDE.join(",")),
                ])
                .arg(SUITE)
                .arg(&tmp)
                .arg(&mirror),
        )
        .map_err(|e| BedError(format!("debootstrap failed: {e}")))?;
        prepare(&tmp)?;
        fs::rename(&tmp, &root).map_err(|e| {
            BedError(format!(
                "cannot rename {} to {}: {e}",
                tmp.display(),
                root.display()
            ))
        })?;
        eprintln!(
            "testbed: root file system ready in {:.0?}: {}",
            started.elapsed(),
            root.display()
        );
        Ok(root)
    }

    /// Boots a fresh copy of the cached root file system, with sshd on its slot's first port.
    pub fn boot_fresh(bed: &Bed) -> Result<Machine> {
        let rootfs = Self::rootfs()?;
        install_packages(HOST_PACKAGES)?;
        sweep(&Self::default_dir());
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let dir = Self::default_dir().join("runs").join(format!(
            "m{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)
            .map_err(|e| BedError(format!("cannot create {}: {e}", dir.display())))?;
        util::run(
            Command::new("cp")
                .arg("-a")
                .arg(&rootfs)
                .arg(dir.join("root")),
        )?;
        let (slot, ports) = reserve_slot(Path::new(SLOT_LOCKS))?;
        let ssh_port = ports[0];
        crate::site::write(
            &dir.join("root/etc/ssh/sshd_config.d/fieldtrack-machine.conf"),
            &format!(
                "# The machine shares the host's network: sshd on loopback, on a port of its own.\n\
                 Port {ssh_port}\nListenAddress 127.0.0.1\n"
            ),
        )?;
        crate::site::write(&dir.join("owner.pid"), &std::process::id().to_string())?;
        let docker_socket = match bed.docker_host.strip_prefix("unix://") {
            Some(path) => PathBuf::from(path),
            None => {
                return err(format!(
                    "the bed's engine {} is no unix socket",
                    bed.docker_host
                ))
            }
        };
        let mut machine = Machine {
            dir: dir.clone(),
            root: dir.join("root"),
            ssh_port,
            ports: ports[1..].to_vec(),
            _slot: slot,
            docker_socket,
            nspawn: None,
            init: 0,
        };
        machine.start()?;
        Ok(machine)
    }

    /// Starts nspawn on the root file system and waits until systemd says the system runs.
    fn start(&mut self) -> Result<()> {
        let log = self.dir.join("console.log");
        let name = self
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("machine")
            .to_string();
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args(["--boot", "--register=no", "--keep-unit", "--quiet"])
            .arg(format!("--machine=fieldtrack-{name}"))
            .arg("-D")
            .arg(&self.root)
            .arg(format!(
                "--bind={}:/run/docker.sock",
                self.docker_socket.display()
            ))
            .env_clear()
            .env("PATH", PATH);
        let started = Instant::now();
        let child = crate::bed::spawn_detached(&mut cmd, &log)?;
        crate::site::write(&self.dir.join("nspawn.pid"), &child.id().to_string())?;
        self.nspawn = Some(child);
        self.init = self.wait_for_init()?;
        // `--wait` returns once the boot is over: `running`, or `degraded` with a failed unit.
        // It says nothing while systemd's bus is not up yet: then ask again.
        let deadline = Instant::now() + BOOT_LIMIT;
        let out = loop {
            let out = self
                .command("timeout")
                .arg(BOOT_LIMIT.as_secs().to_string())
                .args(["systemctl", "is-system-running", "--wait"])
                .output()
                .map_err(|e| BedError(format!("cannot run nsenter: {e}")))?;
            if !out.stdout.is_empty() || Instant::now() >= deadline {
                break out;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if said != "running" {
            let failed = self
                .sh("systemctl --failed --no-legend; journalctl -b -p warning --no-pager | tail -n 20")
                .unwrap_or_default();
            return err(format!(
                "the machine {} booted to {said:?}, not \"running\":\n{failed}\n{}",
                self.root.display(),
                util::tail_file(&log, 20)
            ));
        }
        eprintln!(
            "testbed: machine {} booted in {:.1?} (sshd on 127.0.0.1:{})",
            self.root.display(),
            started.elapsed(),
            self.ssh_port
        );
        Ok(())
    }

    /// The container's init is the one child of nspawn (once nspawn has set it up).
    fn wait_for_init(&mut self) -> Result<i32> {
        let deadline = Instant::now() + BOOT_LIMIT;
        let nspawn = self.nspawn.as_mut().expect("booting").id() as i32;
        loop {
            if let Ok(Some(status)) = self.nspawn.as_mut().expect("booting").try_wait() {
                return err(format!(
                    "systemd-nspawn exited ({status}) before booting:\n{}",
                    util::tail_file(&self.dir.join("console.log"), 30)
                ));
            }
            let init = children(nspawn)
                .into_iter()
                .find(|&pid| comm(pid).as_deref() == Some("systemd"));
            // nsenter needs the namespaces in place: systemd answers once it has them.
            if let Some(init) = init {
                let ready = Command::new("nsenter")
                    .args(["-t", &init.to_string(), "-a", "true"])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ready {
                    return Ok(init);
                }
            }
            if Instant::now() >= deadline {
                return err(format!(
                    "the machine's init did not appear under nspawn {nspawn} within {BOOT_LIMIT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A command run inside the machine as root, with a server's clean environment.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.init.to_string(), "-a", "--"])
            .arg("env")
            .arg("-i")
            .arg(format!("PATH={PATH}"))
            .args(["HOME=/root", "LANG=C.UTF-8", "USER=root"])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs a shell script inside as root; its stdout, or an error with its output.
    pub fn sh(&self, script: &str) -> Result<String> {
        util::run(self.command("sh").args(["-c", script]))
    }

    /// Runs a shell script inside as root, whatever its exit code.
    pub fn sh_output(&self, script: &str) -> Output {
        self.command("sh")
            .args(["-c", script])
            .output()
            .expect("nsenter runs")
    }

    /// A path inside the machine, as this host sees it.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// The machine's init, as this host numbers it.
    pub fn init_pid(&self) -> i32 {
        self.init
    }

    /// Whether the machine still runs.
    pub fn running(&mut self) -> bool {
        self.nspawn
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Powers the machine off as an operator would (`systemctl poweroff`) and waits for
    /// nspawn to exit; a machine that does not go within a minute is killed.
    pub fn poweroff(&mut self) -> Result<()> {
        let Some(mut child) = self.nspawn.take() else {
            return Ok(());
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        let _ = self
            .command("systemctl")
            .arg("poweroff")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + POWEROFF_LIMIT;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SIGKILL to a pid namespace's init ends every process in it; nspawn then exits.
        unsafe { libc::kill(self.init, libc::SIGKILL) };
        let _ = child.kill();
        let _ = child.wait();
        err(format!(
            "the machine {} did not power off within {POWEROFF_LIMIT:?}; killed",
            self.root.display()
        ))
    }

    /// Boots this machine's root file system again, as a server switched off and on: the
    /// same files, a new boot.
    pub fn boot_again(&mut self) -> Result<()> {
        self.poweroff()?;
        self.start()
    }

    /// Powers off and deletes the run's folder.
    pub fn remove(mut self) {
        let _ = self.poweroff();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Err(e) = self.poweroff() {
            eprintln!("testbed: {e}");
        }
    }
}

/// An ssh identity of a test, and the host's real `ssh` and `scp` clients aimed at a
/// machine's sshd with it.
#[derive(Debug, Clone)]
pub struct Ssh {
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    pub port: u16,
}

impl Ssh {
    /// Makes a key pair in `dir` (ssh-keygen) for the sshd on 127.0.0.1:`port`.
    pub fn new(dir: &Path, port: u16) -> Result<Ssh> {
        install_packages(HOST_PACKAGES)?;
        let key = dir.join("id_ed25519");
        util::run(
            Command::new("ssh-keygen")
                .args([
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "fieldtrack-test",
                    "-f",
                ])
                .arg(&key),
        )?;
        Ok(Ssh {
            key,
            known_hosts: dir.join("known_hosts"),
            port,
        })
    }

    /// The public half, for an `authorized_keys` file.
    pub fn public_key(&self) -> Result<String> {
        fs::read_to_string(self.key.with_extension("pub"))
            .map_err(|e| BedError(format!("cannot read the public key: {e}")))
    }

    /// Options both clients take: this key only, no agent, no host config, a host key
    /// accepted on first sight into a known_hosts of the test's own.
    fn options(&self, cmd: &mut Command) {
        cmd.arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(&self.key)
            .args(["-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"])
            .args(["-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"])
            .args(["-o", "ConnectTimeout=10"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null());
    }

    /// `ssh -p PORT USER@127.0.0.1 COMMAND`: COMMAND is run by the user's login shell.
    pub fn ssh(&self, user: &str, command: &str) -> Command {
        let mut cmd = Command::new("ssh");
        self.options(&mut cmd);
        cmd.arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{user}@127.0.0.1"))
            .arg(command);
        cmd
    }

    /// `scp -P PORT LOCAL USER@127.0.0.1:REMOTE`.
    pub fn scp(&self, local: &Path, user: &str, remote: &str) -> Command {
        let mut cmd = Command::new("scp");
        self.options(&mut cmd);
        cmd.arg("-P")
            .arg(self.port.to_string())
            .arg(local)
            .arg(format!("{user}@127.0.0.1:{remote}"));
        cmd
    }
}

/// The Debian mirror this host's apt uses, from `/etc/apt/sources.list.d/` and
/// `/etc/apt/sources.list`.
pub fn host_mirror() -> Result<String> {
    let mut files: Vec<(String, String)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            if let Ok(text) = fs::read_to_string(&path) {
                files.push((path.display().to_string(), text));
            }
        }
    }
    if let Ok(text) = fs::read_to_string("/etc/apt/sources.list") {
        files.push(("/etc/apt/sources.list".into(), text));
    }
    mirror_in(&files).ok_or_else(|| {
        BedError(format!(
            "no `deb` source for {SUITE} main in /etc/apt/sources.list.d/ or /etc/apt/sources.list"
        ))
    })
}

/// The URI of the first binary source for [`SUITE`] itself (not -updates or -security) with
/// the `main` component, in `*.sources` (deb822) and `*.list` files, in the given order.
fn mirror_in(files: &[(String, String)]) -> Option<String> {
    files.iter().find_map(|(name, text)| {
        if name.ends_with(".sources") {
            deb822_mirror(text)
        } else if name.ends_with(".list") {
            one_line_mirror(text)
        } else {
            None
        }
    })
}

fn deb822_mirror(text: &str) -> Option<String> {
    // Stanzas are separated by blank lines; a line starting with '#' is a comment.
    text.split("\n\n").find_map(|stanza| {
        let field = |key: &str| {
            stanza
                .lines()
                .filter(|l| !l.starts_with('#'))
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case(key)
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default()
        };
        let has = |key: &str, word: &str| field(key).split_whitespace().any(|w| w == word);
        let enabled = !field("Enabled").eq_ignore_ascii_case("no");
        (enabled && has("Types", "deb") && has("Suites", SUITE) && has("Components", "main"))
            .then(|| field("URIs").split_whitespace().next().map(str::to_string))
            .flatten()
    })
}

fn one_line_mirror(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let rest = line.strip_prefix("deb ")?.trim_start();
        // Options: `deb [arch=amd64 signed-by=...] URI SUITE COMPONENTS`.
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']')?.1,
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let (uri, suite) = (words.next()?, words.next()?);
        (suite == SUITE && words.any(|w| w == "main")).then(|| uri.to_string())
    })
}

/// Makes a freshly bootstrapped root file system a server of the bed: its own hostname,
/// nginx without Debian's default site (port 80 is the host's), and no periodic apt runs.
fn prepare(root: &Path) -> Result<()> {
    crate::site::write(&root.join("etc/hostname"), "fieldtrack-machine\n")?;
    let default_site = root.join("etc/nginx/sites-enabled/default");
    if default_site.symlink_metadata().is_ok() {
        fs::remove_file(&default_site)
            .map_err(|e| BedError(format!("cannot remove {}: {e}", default_site.display())))?;
    }
    for timer in ["apt-daily.timer", "apt-daily-upgrade.timer"] {
        let mask = root.join("etc/systemd/system").join(timer);
        let _ = fs::remove_file(&mask);
        std::os::unix::fs::symlink("/dev/null", &mask)
            .map_err(|e| BedError(format!("cannot mask {timer}: {e}")))?;
    }
    Ok(())
}

/// Takes the first slot of [`MACHINE_PORTS`] that no other machine holds and whose ports
/// are all free now; its lock and its ports.
fn reserve_slot(slots: &Path) -> Result<(Flock, Vec<u16>)> {
    fs::create_dir_all(slots)
        .map_err(|e| BedError(format!("cannot create {}: {e}", slots.display())))?;
    let mut first = MACHINE_PORTS.start;
    while first + SLOT_PORTS <= MACHINE_PORTS.end {
        let ports: Vec<u16> = (first..first + SLOT_PORTS).collect();
        if let Some(lock) = Flock::try_take(&slots.join(format!("{first}.lock")))? {
            let free = ports
                .iter()
                .all(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
            if free {
                return Ok((lock, ports));
            }
        }
        first += SLOT_PORTS;
    }
    err(format!(
        "no free slot of {SLOT_PORTS} ports in {MACHINE_PORTS:?} for the machine"
    ))
}

/// Removes half-made root file systems of earlier attempts (the caller holds the lock).
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("rootfs.tmp-")
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Ends the machines of test processes that died (their nspawn, by its recorded pid, when it
/// is still that nspawn) and deletes their copies.
fn sweep(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir.join("runs")) else {
        return;
    };
    for entry in entries.flatten() {
        let run = entry.path();
        if util::read_pid(&run.join("owner.pid")).is_some_and(util::pid_alive) {
            continue;
        }
        if let Some(pid) = util::read_pid(&run.join("nspawn.pid")) {
            let ours = fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*run.to_string_lossy()));
            if ours && comm(pid).as_deref() == Some("systemd-nspawn") {
                if let Some(init) = children(pid).into_iter().next() {
                    unsafe { libc::kill(init, libc::SIGKILL) };
                }
                util::stop_pid(pid, libc::SIGTERM, Duration::from_secs(10));
            }
        }
        let _ = fs::remove_dir_all(&run);
    }
}

fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn comm(pid: i32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn mirror_is_read_from_a_deb822_sources_file_skipping_security_and_disabled_ones() {
        let sources = "Types: deb\n# http://snapshot.example/archive/debian-security/\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
                       Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\n";
        let found = mirror_in(&files(&[
            (
                "/etc/apt/sources.list.d/other.list.disabled",
                "deb http://x.example/ bookworm main\n",
            ),
            ("/etc/apt/sources.list.d/debian.sources", sources),
        ]));
        assert_eq!(found.as_deref(), Some("http://mirror.example/debian"));
        let off = "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n";
        assert_eq!(mirror_in(&files(&[("a.sources", off)])), None);
    }

    #[test]
    fn mirror_is_read_from_a_one_line_list_with_options() {
        let list = "# deb http://commented.example/debian bookworm main\n\
                    deb-src http://src.example/debian bookworm main\n\
                    deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://m.example/debian bookworm main non-free\n";
        assert_eq!(
            mirror_in(&files(&[("/etc/apt/sources.list", list)])).as_deref(),
            Some("http://m.example/debian")
        );
        let other_suite = "deb http://m.example/debian bookworm-updates main\n";
        assert_eq!(mirror_in(&files(&[("x.list", other_suite)])), None);
    }
}
