//! A real Docker Swarm on this one machine, for fieldtrack's `swarm` runtime: N `dockerd`
//! nodes, each in a network namespace of its own, one manager and the rest workers joined
//! with the real join token, and an "edge" namespace that holds the registry, the tests'
//! nginx and fieldtrack itself.
//!
//! ```text
//!   ftsw-edge: br0 10.231.0.1/24, registry :5000, nginx, fieldtrack
//!     ├─ veth ── ftsw-n1: eth0 10.231.0.11  dockerd (manager)
//!     ├─ veth ── ftsw-n2: eth0 10.231.0.12  dockerd (worker)
//!     └─ veth ── ftsw-nN: eth0 10.231.0.(10+N)
//! ```
//!
//! Why namespaces and not containers (docker-in-docker): a node here is a plain `dockerd`
//! with its own data root, exec root, socket, containerd and network stack, started like the
//! main bed's engine; taking its link down is a real partition and SIGKILL is a real engine
//! death, with nothing in between. The addresses are a private range that exists only inside
//! these namespaces, so nothing is ever routed off the machine.
//!
//! Each dockerd is started with `nsenter --net=/run/netns/NAME`, not `ip netns exec`, which
//! remounts /sys: dockerd then misses the cgroup mount and fails ("Devices cgroup isn't
//! mounted"). Each node also gets a UTS namespace of its own (kept by a bind mount, like
//! `ip netns` keeps network namespaces) whose hostname is the node's name, so that
//! `docker node ls` tells the nodes apart.
//!
//! Everything is found again by pid files and fixed paths under `Bed::default_dir()/swarm`,
//! never by process names. [`Swarm::up`] reuses a healthy cluster of the asked size and
//! otherwise rebuilds it from nothing; [`Swarm::down`] leaves no process, namespace, veth or
//! mount behind.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bed::{docker_answers, spawn_detached, which};
use crate::site::{self, ConfigValues};
use crate::util::{self, err, BedError, Result};
use crate::{Bed, SiteOptions};

/// Nodes in the cluster the tests use.
pub const DEFAULT_NODES: usize = 3;
/// The most nodes `up` accepts: node addresses are 10.231.0.11 and up in one /24.
pub const MAX_NODES: usize = 200;
/// Network namespaces of the swarm bed are named `ftsw-…`; nothing else uses this prefix.
const NETNS_PREFIX: &str = "ftsw-";
/// The edge namespace: the registry, nginx and fieldtrack run here.
pub const EDGE_NETNS: &str = "ftsw-edge";
/// The edge's address on the bridge every node hangs off.
pub const EDGE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
const PREFIX_LEN: u8 = 24;
/// The edge registry's port.
const REGISTRY_PORT: u16 = 5000;
/// The repository path of the test images (the same as in the main bed's registry).
const IMAGE_PATH: &str = "fieldtrack-test/app";
/// Host-mode ports for sites and tests are handed out from this range, cycling.
const NODE_PORTS: std::ops::Range<u16> = 20000..30000;
/// How long a node's dockerd may take to answer after it is started.
const ENGINE_START: Duration = Duration::from_secs(90);

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// 1 for the manager, then 2, 3, …
    pub index: usize,
    /// `ftsw-nK`: the network namespace's name and the node's hostname (`docker node ls`).
    pub name: String,
    /// `/run/netns/ftsw-nK`.
    pub netns: PathBuf,
    /// The node's address, 10.231.0.(10+K): where its host-mode ports answer.
    pub addr: Ipv4Addr,
    /// `DOCKER_HOST` of this node's engine, `unix://…/swarm/nK/docker.sock`.
    pub docker_host: String,
    /// The node's folder: data root, exec root, socket, pid file and log.
    pub dir: PathBuf,
    /// The node's Swarm ID (what tasks name as their `NodeID`).
    pub id: String,
}

impl Node {
    fn new(dir: &Path, index: usize) -> Node {
        let node_dir = dir.join(format!("n{index}"));
        Node {
            index,
            name: format!("{NETNS_PREFIX}n{index}"),
            netns: PathBuf::from(format!("/run/netns/{NETNS_PREFIX}n{index}")),
            addr: node_addr(index),
            docker_host: format!("unix://{}", node_dir.join("docker.sock").display()),
            dir: node_dir,
            id: String::new(),
        }
    }

    pub fn is_manager(&self) -> bool {
        self.index == 1
    }

    /// The dockerd's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("dockerd.pid")
    }

    /// The dockerd's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The dockerd's pid, when it is running.
    pub fn engine_pid(&self) -> Option<i32> {
        util::read_pid(&self.pid_file()).filter(|pid| util::pid_alive(*pid))
    }

    fn exec_root(&self) -> PathBuf {
        self.dir.join("exec")
    }

    fn uts_file(&self) -> PathBuf {
        self.dir
            .parent()
            .expect("a node folder sits in the swarm folder")
            .join("uts")
            .join(&self.name)
    }

    /// A `docker` command aimed at this node's engine.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.docker_host);
        cmd
    }

    /// `ADDR:port`, a host-mode port of this node.
    pub fn socket(&self, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.addr, port))
    }
}

fn node_addr(index: usize) -> Ipv4Addr {
    let last = u8::try_from(10 + index).expect("at most MAX_NODES nodes");
    Ipv4Addr::new(10, 231, 0, last)
}

/// A running cluster. Cheap to clone; everything in it is a name, a path or an address.
#[derive(Debug, Clone)]
pub struct Swarm {
    /// `Bed::default_dir()/swarm`.
    pub dir: PathBuf,
    /// Every node, the manager first.
    pub nodes: Vec<Node>,
    /// `DOCKER_HOST` of the manager (node 1).
    pub manager_host: String,
    /// `/run/netns/ftsw-edge`.
    pub edge_netns: PathBuf,
    /// `10.231.0.1:5000`: the edge registry, serving the main bed's registry storage.
    pub registry: String,
    /// `10.231.0.1:5000/fieldtrack-test/app`.
    pub repository: String,
    /// The main bed (its registry storage is the edge registry's).
    pub bed: Bed,
}

/// A task of a service, as the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    /// The node's name (`ftsw-nK`), None while the task is not assigned (or the node is
    /// not one of ours).
    pub node: Option<String>,
    /// `Status.State`: new, pending, assigned, …, running, shutdown, failed, rejected, …
    pub state: String,
    /// `DesiredState`: running, shutdown, …
    pub desired: String,
}

impl Swarm {
    /// The cluster's folder.
    pub fn default_dir() -> PathBuf {
        Bed::default_dir().join("swarm")
    }

    /// The main bed and a cluster of [`DEFAULT_NODES`] for this test process, brought up
    /// once. When either cannot come up the test fails with the reason; it never skips.
    pub fn shared() -> &'static Swarm {
        static SWARM: OnceLock<std::result::Result<Swarm, String>> = OnceLock::new();
        let swarm = SWARM
            .get_or_init(|| Swarm::up(Bed::shared(), DEFAULT_NODES).map_err(|e| e.to_string()));
        match swarm {
            Ok(swarm) => swarm,
            Err(e) => panic!("the swarm test bed (nodes in network namespaces) is not up: {e}"),
        }
    }

    /// Brings up a cluster of `nodes` nodes, idempotently: a healthy cluster of that size is
    /// reused, anything else is torn down and built again from nothing.
    pub fn up(bed: &Bed, nodes: usize) -> Result<Swarm> {
        if !(1..=MAX_NODES).contains(&nodes) {
            return err(format!("a swarm has 1 to {MAX_NODES} nodes, not {nodes}"));
        }
        let dir = Self::default_dir();
        fs::create_dir_all(&dir)
            .map_err(|e| BedError(format!("cannot create {}: {e}", dir.display())))?;
        let _lock = FileLock::exclusive(&dir.join("lock"))?;
        let mut swarm = Swarm::describe(bed, dir, nodes);
        match swarm.healthy() {
            Ok(()) => {
                sweep_sites(&swarm.dir, Some(&swarm.manager_host), false);
            }
            Err(why) => {
                // A test of another process may be breaking nodes on purpose right now:
                // wait until no test holds the cluster, then look again, and repair what a
                // test may have left (a link down, an engine killed, a node drained) before
                // throwing the cluster away.
                let _alone = FileLock::exclusive(&swarm.dir.join("use.lock"))?;
                let repaired = swarm.healthy().is_ok()
                    || (swarm.repairable()
                        && swarm
                            .restore()
                            .map_err(|e| eprintln!("testbed: cannot repair the swarm: {e}"))
                            .is_ok()
                        && swarm.healthy().is_ok());
                if !repaired {
                    if swarm.dir.join("nodes").exists() {
                        eprintln!("testbed: rebuilding the swarm ({why})");
                    }
                    teardown(&swarm.dir)?;
                    swarm.build()?;
                }
            }
        }
        swarm.read_node_ids()?;
        Ok(swarm)
    }

    /// The cluster that is up now, whatever its size, left as it is; an error when there is
    /// none or it is not whole.
    pub fn existing(bed: &Bed) -> Result<Swarm> {
        let dir = Self::default_dir();
        let nodes: usize = fs::read_to_string(dir.join("nodes"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| BedError("no swarm is up (testbed swarm up)".into()))?;
        let mut swarm = Swarm::describe(bed, dir, nodes);
        swarm
            .healthy()
            .map_err(|why| BedError(format!("the swarm is not whole: {why}")))?;
        swarm.read_node_ids()?;
        Ok(swarm)
    }

    /// The cluster of `nodes` nodes in `dir`, as names and addresses (node IDs not read).
    fn describe(bed: &Bed, dir: PathBuf, nodes: usize) -> Swarm {
        let nodes: Vec<Node> = (1..=nodes).map(|k| Node::new(&dir, k)).collect();
        Swarm {
            manager_host: nodes[0].docker_host.clone(),
            nodes,
            edge_netns: PathBuf::from(format!("/run/netns/{EDGE_NETNS}")),
            registry: format!("{EDGE_ADDR}:{REGISTRY_PORT}"),
            repository: format!("{EDGE_ADDR}:{REGISTRY_PORT}/{IMAGE_PATH}"),
            bed: bed.clone(),
            dir,
        }
    }

    /// Stops and removes the whole cluster: sites' nginx, the edge registry, every node's
    /// dockerd, containerd and containers, the namespaces (with their veths and bridge), the
    /// mounts and the nodes' folders.
    pub fn down() -> Result<()> {
        let dir = Self::default_dir();
        fs::create_dir_all(&dir)
            .map_err(|e| BedError(format!("cannot create {}: {e}", dir.display())))?;
        let _lock = FileLock::exclusive(&dir.join("lock"))?;
        // Not under a running test (of another process).
        let _alone = FileLock::exclusive(&dir.join("use.lock"))?;
        teardown(&dir)
    }

    /// Lines of `export KEY=value` describing the cluster, for scripts
    /// (`eval "$(testbed swarm up)"`).
    pub fn env_lines(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(|n| n.addr.to_string()).collect();
        format!(
            "export FIELDTRACK_SWARM_MANAGER={}\nexport FIELDTRACK_SWARM_EDGE_NETNS={}\nexport FIELDTRACK_SWARM_REGISTRY={}\nexport FIELDTRACK_SWARM_REPOSITORY={}\nexport FIELDTRACK_SWARM_NODES=\"{}\"\n",
            self.manager_host,
            self.edge_netns.display(),
            self.registry,
            self.repository,
            addrs.join(" ")
        )
    }

    /// The manager node.
    pub fn manager(&self) -> &Node {
        &self.nodes[0]
    }

    /// The worker nodes.
    pub fn workers(&self) -> &[Node] {
        &self.nodes[1..]
    }

    /// The node with this address, if it is one of ours.
    pub fn node_at(&self, addr: Ipv4Addr) -> Option<&Node> {
        self.nodes.iter().find(|n| n.addr == addr)
    }

    /// The full reference of a test image in the edge registry, e.g.
    /// `10.231.0.1:5000/fieldtrack-test/app:v1`.
    pub fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.repository)
    }

    /// Copies an existing tag to a new one (through the main bed's registry, whose storage
    /// the edge registry serves); returns the new tag's reference in the edge registry.
    pub fn push_alias(&self, tag: &str, alias: &str) -> Result<String> {
        self.bed.push_alias(tag, alias)?;
        Ok(self.image(alias))
    }

    /// A command that runs `program` inside the edge namespace. Tests run fieldtrack and
    /// nginx this way; the process is `program` itself (nsenter execs it), so its pid is the
    /// child's.
    pub fn edge_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{EDGE_NETNS}"))
            .arg("--")
            .arg(program);
        cmd
    }

    /// A `docker` command aimed at `node`'s engine.
    pub fn docker(&self, node: &Node) -> Command {
        node.docker()
    }

    /// A `docker` command aimed at the manager.
    pub fn manager_docker(&self) -> Command {
        self.manager().docker()
    }

    /// Host-mode ports nothing in the cluster uses: handed out from a cycling counter shared
    /// by every process (a file under a lock), so that two sites never get the same port.
    pub fn node_ports(&self, n: usize) -> Result<Vec<u16>> {
        let _lock = FileLock::exclusive(&self.dir.join("ports.lock"))?;
        let file = self.dir.join("ports.next");
        let mut next: u16 = fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .filter(|p| NODE_PORTS.contains(p))
            .unwrap_or(NODE_PORTS.start);
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            ports.push(next);
            next = if next + 1 >= NODE_PORTS.end {
                NODE_PORTS.start
            } else {
                next + 1
            };
        }
        site::write(&file, &next.to_string())?;
        Ok(ports)
    }

    /// Takes the cluster for a test that leaves it as it is (no partition, no engine death,
    /// no drain): such tests run side by side, and never while a [`Swarm::faults`] test runs.
    pub fn steady(&self) -> ClusterUse {
        let lock = FileLock::shared(&self.dir.join("use.lock"))
            .unwrap_or_else(|e| panic!("cannot take the swarm's use lock: {e}"));
        ClusterUse {
            _lock: lock,
            restore: None,
        }
    }

    /// Takes the cluster alone, for a test that breaks nodes (partitions, kills engines,
    /// drains). Every node is made healthy again (link up, engine running, availability
    /// active, Ready) before the test and when the guard is dropped, also after a panic.
    pub fn faults(&self) -> ClusterUse {
        let lock = FileLock::exclusive(&self.dir.join("use.lock"))
            .unwrap_or_else(|e| panic!("cannot take the swarm's use lock: {e}"));
        self.restore()
            .unwrap_or_else(|e| panic!("cannot make the swarm healthy before the test: {e}"));
        ClusterUse {
            _lock: lock,
            restore: Some(self.clone()),
        }
    }

    /// Makes every node healthy again: link up, engine running, availability active, and
    /// waits until the manager sees them all Ready.
    pub fn restore(&self) -> Result<()> {
        for node in &self.nodes {
            if !self.link_up(node)? {
                self.heal(node)?;
            }
            if node.engine_pid().is_none() || docker_answers(&node.docker_host).is_err() {
                self.restart_engine(node)?;
            }
        }
        for node in &self.nodes {
            if self.node_state(node).map(|(_, a)| a) != Some("active".to_string()) {
                self.activate(node)?;
            }
        }
        for node in &self.nodes {
            if !self.wait_node_state(node, "ready", Duration::from_secs(120)) {
                return err(format!(
                    "node {} is not ready again: {:?}",
                    node.name,
                    self.node_state(node)
                ));
            }
        }
        Ok(())
    }

    /// Takes `node`'s link down (inside its namespace): a real partition. The manager marks
    /// it Down after its heartbeats stop (about 11 s) and reschedules its tasks.
    pub fn partition(&self, node: &Node) -> Result<()> {
        util::run(Command::new("ip").args(["-n", &node.name, "link", "set", "eth0", "down"]))
            .map(drop)
    }

    /// Brings `node`'s link back up.
    pub fn heal(&self, node: &Node) -> Result<()> {
        util::run(Command::new("ip").args(["-n", &node.name, "link", "set", "eth0", "up"]))
            .map(drop)
    }

    fn link_up(&self, node: &Node) -> Result<bool> {
        let out =
            util::run(Command::new("ip").args(["-n", &node.name, "-o", "link", "show", "eth0"]))?;
        Ok(out.contains(",UP"))
    }

    /// SIGKILLs `node`'s dockerd (by its pid file), as a crash would; its containerd goes
    /// with it (dockerd gives it a parent-death signal), its containers keep running.
    pub fn kill_engine(&self, node: &Node) -> Result<()> {
        let Some(pid) = node.engine_pid() else {
            return err(format!("the dockerd of {} is not running", node.name));
        };
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let gone = util::wait_until(Duration::from_secs(10), || {
            reap(pid);
            !util::pid_alive(pid)
        });
        if !gone {
            return err(format!(
                "the dockerd of {} (pid {pid}) survived SIGKILL",
                node.name
            ));
        }
        Ok(())
    }

    /// Starts `node`'s dockerd again (stopping it first if it runs) and waits until it
    /// answers. It rejoins the swarm by itself: its data root holds the membership.
    pub fn restart_engine(&self, node: &Node) -> Result<()> {
        if let Some(pid) = node.engine_pid() {
            util::stop_pid(pid, libc::SIGTERM, Duration::from_secs(20));
            reap(pid);
        }
        start_engine(node)
    }

    /// `docker node update --availability drain`: Swarm moves the node's tasks elsewhere.
    pub fn drain(&self, node: &Node) -> Result<()> {
        self.availability(node, "drain")
    }

    /// `docker node update --availability active`.
    pub fn activate(&self, node: &Node) -> Result<()> {
        self.availability(node, "active")
    }

    fn availability(&self, node: &Node, availability: &str) -> Result<()> {
        util::run(self.manager_docker().args([
            "node",
            "update",
            "--availability",
            availability,
            &node.name,
        ]))
        .map(drop)
    }

    /// The manager's view of `node`: (`Status.State`, `Spec.Availability`), e.g.
    /// `("ready", "active")` or `("down", "active")`; None when the manager does not answer.
    pub fn node_state(&self, node: &Node) -> Option<(String, String)> {
        let out = util::run(self.manager_docker().args([
            "node",
            "inspect",
            "--format",
            "{{.Status.State}} {{.Spec.Availability}}",
            &node.name,
        ]))
        .ok()?;
        let (state, availability) = out.trim().split_once(' ')?;
        Some((state.to_string(), availability.to_string()))
    }

    /// Waits until the manager reports `node` in `state` ("ready", "down", …).
    pub fn wait_node_state(&self, node: &Node, state: &str, limit: Duration) -> bool {
        util::wait_until(limit, || {
            self.node_state(node).is_some_and(|(s, _)| s == state)
        })
    }

    /// The tasks of `service`, with the node each runs on (by name); empty when the service
    /// does not exist.
    pub fn tasks(&self, service: &str) -> Vec<Task> {
        let Ok(ids) =
            util::run(
                self.manager_docker()
                    .args(["service", "ps", "-q", "--no-trunc", service]),
            )
        else {
            return Vec::new();
        };
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Vec::new();
        }
        // Names by the manager's current IDs, not `Node::id`: those are gone if another
        // process rebuilt the cluster since this one read them.
        let names: BTreeMap<String, String> = util::run(self.manager_docker().args([
            "node",
            "ls",
            "--format",
            "{{.ID}} {{.Hostname}}",
        ]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, name)| (id.to_string(), name.trim().to_string()))
        .collect();
        let Ok(out) = util::run(
            self.manager_docker()
                .args([
                    "inspect",
                    "--type",
                    "task",
                    "--format",
                    "{{.ID}} {{.NodeID}} {{.Status.State}} {{.DesiredState}}",
                ])
                .args(&ids),
        ) else {
            return Vec::new();
        };
        out.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // An unassigned task has an empty NodeID: three fields.
                let (id, node_id, state, desired) = match fields.as_slice() {
                    [id, node, state, desired] => (*id, Some(*node), *state, *desired),
                    [id, state, desired] => (*id, None, *state, *desired),
                    _ => return None,
                };
                Some(Task {
                    id: id.to_string(),
                    node: node_id.and_then(|nid| names.get(nid).cloned()),
                    state: state.to_string(),
                    desired: desired.to_string(),
                })
            })
            .collect()
    }

    /// Removes services by name, ignoring those that do not exist.
    pub fn remove_services(&self, names: &[String]) {
        for name in names {
            let _ = util::run(self.manager_docker().args(["service", "rm", name]));
        }
    }

    /// Is there a cluster of this size whose namespaces and registry are in place, so that
    /// [`Swarm::restore`] may make it whole?
    fn repairable(&self) -> bool {
        let recorded = fs::read_to_string(self.dir.join("nodes")).unwrap_or_default();
        recorded.trim() == self.nodes.len().to_string()
            && std::iter::once(EDGE_NETNS.to_string())
                .chain(self.nodes.iter().map(|n| n.name.clone()))
                .all(|name| Path::new("/run/netns").join(name).exists())
            && util::read_pid(&self.dir.join("registry.pid")).is_some_and(util::pid_alive)
            && registry_answers()
    }

    /// Checks that the cluster described by `self` runs and is whole.
    fn healthy(&self) -> std::result::Result<(), String> {
        let recorded =
            fs::read_to_string(self.dir.join("nodes")).map_err(|_| "no cluster yet".to_string())?;
        if recorded.trim() != self.nodes.len().to_string() {
            return Err(format!(
                "it has {} nodes, {} wanted",
                recorded.trim(),
                self.nodes.len()
            ));
        }
        for name in
            std::iter::once(EDGE_NETNS.to_string()).chain(self.nodes.iter().map(|n| n.name.clone()))
        {
            if !Path::new("/run/netns").join(&name).exists() {
                return Err(format!("namespace {name} is missing"));
            }
        }
        match util::read_pid(&self.dir.join("registry.pid")) {
            Some(pid) if util::pid_alive(pid) => {}
            _ => return Err("the edge registry is not running".into()),
        }
        if !registry_answers() {
            return Err("the edge registry does not answer".into());
        }
        for node in &self.nodes {
            if !self.link_up(node).map_err(|e| e.to_string())? {
                return Err(format!("the link of {} is down", node.name));
            }
            if node.engine_pid().is_none() {
                return Err(format!("the dockerd of {} is not running", node.name));
            }
            if let Err(e) = docker_answers(&node.docker_host) {
                return Err(format!("the dockerd of {} does not answer: {e}", node.name));
            }
        }
        let listed = util::run(self.manager_docker().args([
            "node",
            "ls",
            "--format",
            "{{.Hostname}} {{.Status}} {{.Availability}}",
        ]))
        .map_err(|e| e.to_string())?;
        let mut seen: Vec<&str> = listed.lines().collect();
        seen.sort();
        let mut expected: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{} Ready Active", n.name))
            .collect();
        expected.sort();
        if seen != expected {
            return Err(format!("the manager lists {seen:?}"));
        }
        Ok(())
    }

    /// Builds the cluster from nothing (after [`teardown`]).
    fn build(&self) -> Result<()> {
        let started = Instant::now();
        for program in ["ip", "nsenter", "unshare", "hostname"] {
            if which(program).is_none() {
                return err(format!(
                    "{program} is not installed (iproute2, util-linux and hostname are needed)"
                ));
            }
        }
        eprintln!("testbed: building a swarm of {} nodes", self.nodes.len());
        self.network()?;
        self.edge_registry()?;
        // All engines start at once: they take seconds each, mostly waiting.
        let mut children = Vec::new();
        for node in &self.nodes {
            children.push((node, spawn_engine(node)?));
        }
        for (node, mut child) in children {
            wait_engine(node, &mut child)?;
        }
        // The size is recorded first: `healthy`, which `form` waits on, compares with it.
        site::write(&self.dir.join("nodes"), &self.nodes.len().to_string())?;
        self.form()?;
        eprintln!(
            "testbed: swarm of {} nodes up in {:.1} s",
            self.nodes.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// The namespaces, the bridge in the edge and one veth pair per node.
    fn network(&self) -> Result<()> {
        let ip = |args: &[&str]| util::run(Command::new("ip").args(args)).map(drop);
        let edge_cidr = format!("{EDGE_ADDR}/{PREFIX_LEN}");
        ip(&["netns", "add", EDGE_NETNS])?;
        ip(&["-n", EDGE_NETNS, "link", "set", "lo", "up"])?;
        ip(&["-n", EDGE_NETNS, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", EDGE_NETNS, "addr", "add", &edge_cidr, "dev", "br0"])?;
        ip(&["-n", EDGE_NETNS, "link", "set", "br0", "up"])?;
        fs::create_dir_all(self.dir.join("uts")).map_err(|e| {
            BedError(format!(
                "cannot create {}: {e}",
                self.dir.join("uts").display()
            ))
        })?;
        for node in &self.nodes {
            let name = node.name.as_str();
            let edge_end = format!("veth-n{}", node.index);
            let cidr = format!("{}/{PREFIX_LEN}", node.addr);
            ip(&["netns", "add", name])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &edge_end, "netns", EDGE_NETNS, "type", "veth", "peer", "name",
                "eth0", "netns", name,
            ])?;
            ip(&[
                "-n", EDGE_NETNS, "link", "set", &edge_end, "master", "br0", "up",
            ])?;
            ip(&["-n", name, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", name, "link", "set", "eth0", "up"])?;
            // No default route: every address the cluster uses is on this one link, and
            // nothing is meant to leave the machine.

            // The node's own hostname, in a UTS namespace kept by a bind mount on this file.
            let uts = node.uts_file();
            site::write(&uts, "")?;
            util::run(
                Command::new("unshare")
                    .arg(format!("--uts={}", uts.display()))
                    .args(["hostname", name]),
            )?;
        }
        Ok(())
    }

    /// The registry in the edge, serving the main bed's registry storage: the images
    /// `Bed::up` pushed are there under the edge's address too.
    fn edge_registry(&self) -> Result<()> {
        let config = self.dir.join("registry.yml");
        site::write(
            &config,
            &format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
                self.bed.dir.join("registry-data").display(),
                self.registry
            ),
        )?;
        let program = which("docker-registry")
            .ok_or_else(|| BedError("docker-registry is not installed".into()))?;
        let log = self.dir.join("registry.log");
        let mut child =
            spawn_detached(Self::edge_command(program).arg("serve").arg(&config), &log)?;
        site::write(&self.dir.join("registry.pid"), &child.id().to_string())?;
        let ready = util::wait_until(Duration::from_secs(30), || {
            matches!(child.try_wait(), Ok(Some(_))) || registry_answers()
        });
        if !ready || matches!(child.try_wait(), Ok(Some(_))) {
            return err(format!(
                "the edge registry did not answer on {}; last lines of {}:\n{}",
                self.registry,
                log.display(),
                util::tail_file(&log, 30)
            ));
        }
        Ok(())
    }

    /// `swarm init` on the manager, `swarm join` with the worker token on the others, then
    /// waits until the manager lists every node Ready.
    fn form(&self) -> Result<()> {
        let manager = self.manager();
        let manager_addr = manager.addr.to_string();
        util::run(manager.docker().args([
            "swarm",
            "init",
            "--advertise-addr",
            &manager_addr,
            "--listen-addr",
            &format!("{manager_addr}:2377"),
        ]))?;
        let token = util::run(
            manager
                .docker()
                .args(["swarm", "join-token", "-q", "worker"]),
        )?;
        let token = token.trim();
        for node in self.workers() {
            let addr = node.addr.to_string();
            util::run(node.docker().args([
                "swarm",
                "join",
                "--advertise-addr",
                &addr,
                "--listen-addr",
                &format!("{addr}:2377"),
                "--token",
                token,
                &format!("{manager_addr}:2377"),
            ]))?;
        }
        let mut last = String::new();
        let formed = util::wait_until(Duration::from_secs(120), || {
            last = self.healthy().err().unwrap_or_default();
            last.is_empty() || !last.starts_with("the manager lists")
        });
        if !formed || !last.is_empty() {
            return err(format!("the swarm did not form: {last}"));
        }
        Ok(())
    }

    fn read_node_ids(&mut self) -> Result<()> {
        let listed = util::run(self.manager_docker().args([
            "node",
            "ls",
            "--format",
            "{{.ID}} {{.Hostname}}",
        ]))?;
        for line in listed.lines() {
            if let Some((id, name)) = line.split_once(' ') {
                if let Some(node) = self.nodes.iter_mut().find(|n| n.name == name.trim()) {
                    node.id = id.to_string();
                }
            }
        }
        if let Some(node) = self.nodes.iter().find(|n| n.id.is_empty()) {
            return err(format!("the manager does not list {}", node.name));
        }
        Ok(())
    }
}

/// A test's hold on the cluster; see [`Swarm::steady`] and [`Swarm::faults`].
pub struct ClusterUse {
    _lock: FileLock,
    /// Set for a faults test: the cluster to restore on drop.
    restore: Option<Swarm>,
}

impl Drop for ClusterUse {
    fn drop(&mut self) {
        if let Some(swarm) = &self.restore {
            if let Err(e) = swarm.restore() {
                eprintln!("testbed: cannot make the swarm healthy after the test: {e}");
            }
        }
    }
}

fn registry_answers() -> bool {
    matches!(
        edge_get(SocketAddr::from((EDGE_ADDR, REGISTRY_PORT)), "/v2/"),
        Ok((200, _))
    )
}

/// Starts `node`'s dockerd in the node's namespaces and waits until it answers.
fn start_engine(node: &Node) -> Result<()> {
    let mut child = spawn_engine(node)?;
    wait_engine(node, &mut child)
}

fn spawn_engine(node: &Node) -> Result<std::process::Child> {
    let dockerd = which("dockerd").ok_or_else(|| BedError("dockerd is not installed".into()))?;
    fs::create_dir_all(&node.dir)
        .map_err(|e| BedError(format!("cannot create {}: {e}", node.dir.display())))?;
    let _ = fs::remove_file(node.dir.join("docker.sock"));
    // dockerd refuses to start while the pid in its pid file exists, and a killed one may
    // linger as a zombie until its parent reaps it.
    if node.engine_pid().is_none() {
        let _ = fs::remove_file(node.pid_file());
    }
    spawn_detached(
        Command::new("nsenter")
            .arg(format!("--net={}", node.netns.display()))
            .arg(format!("--uts={}", node.uts_file().display()))
            .arg("--")
            .arg(dockerd)
            .arg("--data-root")
            .arg(node.dir.join("docker"))
            .arg("--exec-root")
            .arg(node.exec_root())
            .arg("--pidfile")
            .arg(node.pid_file())
            .args(["-H", &node.docker_host])
            .arg("--insecure-registry")
            .arg(format!("{EDGE_ADDR}:{REGISTRY_PORT}")),
        &node.log(),
    )
}

fn wait_engine(node: &Node, child: &mut std::process::Child) -> Result<()> {
    let mut last = String::new();
    let ready = util::wait_until(ENGINE_START, || {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        match docker_answers(&node.docker_host) {
            Ok(()) => true,
            Err(e) => {
                last = e;
                false
            }
        }
    });
    if let Ok(Some(status)) = child.try_wait() {
        return err(format!(
            "the dockerd of {} exited ({status}) while starting; last lines of {}:\n{}",
            node.name,
            node.log().display(),
            util::tail_file(&node.log(), 30)
        ));
    }
    if !ready {
        return err(format!(
            "the dockerd of {} did not answer within {ENGINE_START:?} ({last}); last lines of {}:\n{}",
            node.name,
            node.log().display(),
            util::tail_file(&node.log(), 30)
        ));
    }
    Ok(())
}

/// Reaps `pid` if it is a child of this process (an engine a test restarted), so that a
/// killed one does not linger as a zombie.
fn reap(pid: i32) {
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
}

/// Tears down whatever of a cluster is there, in an order that leaves nothing behind:
/// processes first (by pid files), then mounts, then namespaces, then folders.
fn teardown(dir: &Path) -> Result<()> {
    sweep_sites(dir, None, true);
    if let Some(pid) = util::read_pid(&dir.join("registry.pid")) {
        util::stop_pid(pid, libc::SIGTERM, Duration::from_secs(5));
    }
    let node_dirs: Vec<PathBuf> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .and_then(|n| n.strip_prefix('n'))
                            .is_some_and(|k| k.parse::<usize>().is_ok())
                })
                .collect()
        })
        .unwrap_or_default();
    // dockerd stops its containers and its containerd when asked nicely; all at once.
    let engines: Vec<i32> = node_dirs
        .iter()
        .filter_map(|d| util::read_pid(&d.join("dockerd.pid")))
        .filter(|pid| util::pid_alive(*pid))
        .collect();
    for pid in &engines {
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    for pid in &engines {
        util::stop_pid(*pid, libc::SIGTERM, Duration::from_secs(30));
        reap(*pid);
    }
    for node_dir in &node_dirs {
        let containerd = node_dir.join("exec/containerd");
        if let Some(pid) = util::read_pid(&containerd.join("containerd.pid")) {
            util::stop_pid(pid, libc::SIGTERM, Duration::from_secs(10));
        }
        // Containers left by an engine that was SIGKILLed: their init pid is in the
        // bundle, and their shim is that process's parent.
        let bundles = containerd.join("daemon/io.containerd.runtime.v2.task/moby");
        for bundle in fs::read_dir(&bundles).into_iter().flatten().flatten() {
            if let Some(init) = util::read_pid(&bundle.path().join("init.pid")) {
                let shim = crate::procfs::parent(init);
                util::stop_pid(init, libc::SIGKILL, Duration::from_secs(5));
                if let Some(shim) = shim {
                    util::stop_pid(shim, libc::SIGKILL, Duration::from_secs(5));
                }
            }
        }
    }
    let namespaces: Vec<String> = fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .collect()
        })
        .unwrap_or_default();
    // Anything still running inside the bed's own namespaces was started for the bed (a
    // test's fieldtrack or nginx whose process died before cleaning up).
    for name in &namespaces {
        let pids = util::run(Command::new("ip").args(["netns", "pids", name])).unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            eprintln!("testbed: stopping pid {pid}, left running in namespace {name}");
            util::stop_pid(pid, libc::SIGTERM, Duration::from_secs(5));
        }
    }
    unmount_under(dir)?;
    for name in &namespaces {
        util::run(Command::new("ip").args(["netns", "delete", name]))?;
    }
    for node_dir in &node_dirs {
        remove_dir(node_dir)?;
    }
    for path in ["uts", "sites"] {
        remove_dir(&dir.join(path))?;
    }
    for file in ["nodes", "registry.pid"] {
        let _ = fs::remove_file(dir.join(file));
    }
    Ok(())
}

fn remove_dir(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// Unmounts every mount at or below `dir` (the nodes' data roots, overlay layers, container
/// and UTS namespaces), deepest first. Fails if one stays: removing the folders would then
/// delete through it.
fn unmount_under(dir: &Path) -> Result<()> {
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return Ok(());
        }
        for mount in mounts {
            let Ok(path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let left = mounts_under(dir);
    if left.is_empty() {
        Ok(())
    } else {
        err(format!("mounts left under {}: {left:?}", dir.display()))
    }
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mount(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts.dedup();
    mounts
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok());
            if let Some(code) = code {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// Talking to the edge namespace from the test process

/// Runs `f` on a thread of its own that first enters the network namespace at `netns`
/// (`setns` affects only the calling thread), so `f`'s sockets live there.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = fs::File::open(netns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                enter(&file)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread in the namespace panicked")))
    })
}

fn enter(netns: &fs::File) -> io::Result<()> {
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn edge_path() -> PathBuf {
    PathBuf::from(format!("/run/netns/{EDGE_NETNS}"))
}

/// A GET from inside the edge namespace (where nginx and the node addresses are):
/// (status, body). `Connection: close`, 5 s timeouts.
pub fn edge_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    in_netns(&edge_path(), || {
        util::http_get(addr, path, Duration::from_secs(5))
    })?
}

/// Does something accept connections on `addr` in the edge namespace?
pub fn edge_listens(addr: SocketAddr) -> bool {
    in_netns(&edge_path(), || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    })
    .unwrap_or(false)
}

/// Free loopback ports of the edge namespace, asked of its kernel (bind to port 0).
pub fn edge_free_ports(n: usize) -> Result<Vec<u16>> {
    in_netns(&edge_path(), || -> io::Result<Vec<u16>> {
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<io::Result<_>>()?;
        listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect()
    })
    .and_then(|r| r)
    .map_err(|e| {
        BedError(format!(
            "cannot find a free port in the edge namespace: {e}"
        ))
    })
}

/// What a load generator saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Requests answered otherwise, or not at all (refused, reset, timed out).
    pub failed: u64,
    /// The bodies of the 200 answers (trimmed), with how often each came.
    pub by_body: BTreeMap<String, u64>,
    /// The first failures, in words (status or error), for a test's message.
    pub first_failures: Vec<String>,
}

/// A load generator inside the edge namespace: one thread sending GETs one after another
/// (a new connection each, 2 s timeouts) until stopped.
pub struct EdgeLoad {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<LoadReport>,
}

impl EdgeLoad {
    /// Starts sending `GET path` to `addr` (an address of the edge namespace, e.g. a site's
    /// nginx). Returns once the thread is inside the namespace.
    pub fn start(addr: SocketAddr, path: &str) -> io::Result<EdgeLoad> {
        let file = fs::File::open(edge_path())?;
        let stop = Arc::new(AtomicBool::new(false));
        let (entered, entered_rx) = mpsc::channel();
        let path = path.to_string();
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut report = LoadReport::default();
            let result = enter(&file);
            let failed_to_enter = result.is_err();
            let _ = entered.send(result);
            if failed_to_enter {
                return report;
            }
            while !flag.load(Ordering::Relaxed) {
                match util::http_get(addr, &path, Duration::from_secs(2)) {
                    Ok((200, body)) => {
                        report.ok += 1;
                        *report.by_body.entry(body.trim().to_string()).or_default() += 1;
                    }
                    Ok((status, body)) => {
                        report.failed += 1;
                        note(&mut report, format!("{status} {}", body.trim()));
                    }
                    Err(e) => {
                        report.failed += 1;
                        note(&mut report, e.to_string());
                    }
                }
            }
            report
        });
        entered_rx
            .recv()
            .map_err(|_| io::Error::other("the load thread ended"))??;
        Ok(EdgeLoad { stop, thread })
    }

    /// Stops the generator and returns what it saw.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

fn note(report: &mut LoadReport, failure: String) {
    if report.first_failures.len() < 20 {
        report.first_failures.push(failure);
    }
}

// ---------------------------------------------------------------------------------------
// Sites on the cluster

/// One test's site on the cluster: like [`crate::Site`], but nginx runs inside the edge
/// namespace (on 127.0.0.1:`nginx_port` there), the app's services run on the nodes with
/// host-mode ports `blue_port` / `green_port` (unique in the cluster), the repository is
/// the edge registry's, and `fieldtrack.toml` says `[runtime] kind = "swarm"` with the
/// manager as `docker.host`.
///
/// Dropping it stops its nginx (by pid) and removes the app's services.
#[derive(Debug)]
pub struct SwarmSite {
    pub dir: PathBuf,
    pub app: String,
    /// nginx's port on the edge namespace's loopback.
    pub nginx_port: u16,
    pub blue_port: u16,
    pub green_port: u16,
    pub config_path: PathBuf,
    pub desired_file: PathBuf,
    pub history_file: PathBuf,
    pub state_dir: PathBuf,
    pub upstream_file: PathBuf,
    pub upstream_name: String,
    pub repository: String,
    pub swarm: Swarm,
    keep: bool,
    config: ConfigValues,
}

impl SwarmSite {
    /// A new site on the shared cluster.
    pub fn new() -> SwarmSite {
        SwarmSite::create(Swarm::shared(), SiteOptions::default())
            .unwrap_or_else(|e| panic!("cannot set up a swarm test site: {e}"))
    }

    pub fn create(swarm: &Swarm, options: SiteOptions) -> Result<SwarmSite> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let app = options
            .app
            .clone()
            .unwrap_or_else(|| format!("s{:x}{n:x}{:04x}", std::process::id(), nanos % 0xffff));
        let dir = swarm.dir.join("sites").join(&app);
        if dir.exists() {
            return err(format!("site folder {} already exists", dir.display()));
        }
        fs::create_dir_all(dir.join("nginx/logs"))
            .map_err(|e| BedError(format!("cannot create {}: {e}", dir.display())))?;
        if !options.keep {
            site::write(&dir.join("owner.pid"), &std::process::id().to_string())?;
        }
        let ports = swarm.node_ports(2)?;
        let nginx_port = edge_free_ports(1)?[0];
        let upstream_name = format!("fieldtrack_{}", app.replace(['-', '.'], "_"));
        let mut site = SwarmSite {
            config_path: dir.join("fieldtrack.toml"),
            desired_file: dir.join("desired.toml"),
            history_file: dir.join(".deploy_history"),
            state_dir: dir.join(".fieldtrack"),
            upstream_file: dir.join("nginx/upstream.conf"),
            upstream_name,
            repository: swarm.repository.clone(),
            swarm: swarm.clone(),
            keep: options.keep,
            nginx_port,
            blue_port: ports[0],
            green_port: ports[1],
            dir,
            app,
            config: ConfigValues::default(),
        };
        site.default_config();
        site.write_config()?;
        site.start_nginx()?;
        Ok(site)
    }

    fn default_config(&mut self) {
        let prefix = self.dir.join("nginx");
        for (key, value) in site::common_config(
            &self.swarm.bed.nginx,
            &prefix,
            &self.app,
            &self.repository,
            &self.upstream_file,
            &self.upstream_name,
        ) {
            self.config.set(key, value);
        }
        let values: Vec<(&str, String)> = vec![
            ("container.blue_port", self.blue_port.to_string()),
            ("container.green_port", self.green_port.to_string()),
            // Scheduling and pulls on three nodes come before the first probe answers.
            ("health.attempts", "30".to_string()),
            ("runtime.kind", site::quote("swarm")),
            ("swarm.replicas", "3".to_string()),
            ("swarm.max_replicas_per_node", "1".to_string()),
            ("docker.host", site::quote(&self.swarm.manager_host)),
        ];
        for (key, value) in values {
            self.config.set(key, value);
        }
    }

    /// Sets a config key (dotted, e.g. `swarm.replicas`) to a TOML literal and rewrites
    /// `fieldtrack.toml`, like [`crate::Site::set`].
    pub fn set(&mut self, key: &str, literal: &str) {
        self.config.set(key, literal.to_string());
        self.write_config()
            .unwrap_or_else(|e| panic!("cannot write the site config: {e}"));
    }

    /// The current `fieldtrack.toml` text.
    pub fn config_text(&self) -> String {
        self.config.text()
    }

    fn write_config(&self) -> Result<()> {
        site::write(&self.config_path, &self.config_text())
    }

    fn start_nginx(&self) -> Result<()> {
        let prefix = self.dir.join("nginx");
        // Before the first deployment the block may point anywhere: here, at blue on the
        // edge's loopback, where nothing answers.
        site::write(
            &self.upstream_file,
            &format!(
                "upstream {} {{\n    server 127.0.0.1:{};\n}}\n",
                self.upstream_name, self.blue_port
            ),
        )?;
        let conf = site::nginx_conf(
            &prefix,
            &self.upstream_file,
            self.nginx_addr(),
            &self.upstream_name,
        );
        fs::create_dir_all(prefix.join("tmp"))
            .map_err(|e| BedError(format!("cannot create {}: {e}", prefix.display())))?;
        site::write(&prefix.join("nginx.conf"), &conf)?;
        util::run(
            Swarm::edge_command(&self.swarm.bed.nginx)
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(prefix.join("nginx.conf"))
                .arg("-e")
                .arg(prefix.join("logs/error.log")),
        )?;
        let addr = self.nginx_addr();
        if !util::wait_until(Duration::from_secs(10), || edge_listens(addr)) {
            return err(format!(
                "nginx for swarm site {} does not listen on {addr} in the edge namespace; {}",
                self.app,
                util::tail_file(&prefix.join("logs/error.log"), 10)
            ));
        }
        Ok(())
    }

    /// nginx's address inside the edge namespace.
    pub fn nginx_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nginx_port))
    }

    /// GET through the site's nginx (from inside the edge namespace): (status, body).
    pub fn get(&self, path: &str) -> io::Result<(u16, String)> {
        edge_get(self.nginx_addr(), path)
    }

    /// What the live version answers through nginx on `/version`, trimmed.
    pub fn served_version(&self) -> Option<String> {
        match self.get("/version") {
            Ok((200, body)) => Some(body.trim().to_string()),
            _ => None,
        }
    }

    /// A load generator against the site's nginx.
    pub fn load(&self, path: &str) -> io::Result<EdgeLoad> {
        EdgeLoad::start(self.nginx_addr(), path)
    }

    /// The full reference of a test image in the edge registry.
    pub fn image(&self, tag: &str) -> String {
        format!("{}:{tag}", self.repository)
    }

    /// `{app}-{color}`: the service of a color.
    pub fn service(&self, color: &str) -> String {
        format!("{}-{color}", self.app)
    }

    /// A `docker` command aimed at the manager.
    pub fn docker(&self) -> Command {
        self.swarm.manager_docker()
    }

    /// Names of this site's services, sorted.
    pub fn services(&self) -> Vec<String> {
        let out = util::run(self.docker().args([
            "service",
            "ls",
            "--format",
            "{{.Name}}",
            "--filter",
            &format!("label=fieldtrack.app={}", self.app),
        ]))
        .unwrap_or_default();
        let mut names: Vec<String> = out.lines().map(str::to_string).collect();
        names.sort();
        names
    }

    /// The tasks of a color's service.
    pub fn tasks(&self, color: &str) -> Vec<Task> {
        self.swarm.tasks(&self.service(color))
    }

    /// Reads a file of the site, empty when missing.
    pub fn read(&self, path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    /// Stops nginx, removes the services and the folder.
    pub fn teardown(&self) {
        teardown_site(&self.dir, &self.app, Some(&self.swarm.manager_host));
    }
}

impl Default for SwarmSite {
    fn default() -> Self {
        SwarmSite::new()
    }
}

impl Drop for SwarmSite {
    fn drop(&mut self) {
        if !self.keep {
            self.teardown();
        }
    }
}

/// Stops a swarm site's nginx and, when the manager is given, removes the app's services
/// (by label, and by name for a half-made one); then removes its folder.
fn teardown_site(dir: &Path, app: &str, manager_host: Option<&str>) {
    if let Some(pid) = util::read_pid(&dir.join("nginx/nginx.pid")) {
        util::stop_pid(pid, libc::SIGQUIT, Duration::from_secs(5));
    }
    if let Some(host) = manager_host {
        let docker = || {
            let mut cmd = Command::new("docker");
            cmd.env("DOCKER_HOST", host);
            cmd
        };
        let listed = util::run(docker().args([
            "service",
            "ls",
            "-q",
            "--filter",
            &format!("label=fieldtrack.app={app}"),
        ]))
        .unwrap_or_default();
        let mut names: Vec<String> = listed.lines().map(str::to_string).collect();
        for color in ["blue", "green"] {
            names.push(format!("{app}-{color}"));
        }
        for name in names {
            let _ = util::run(docker().args(["service", "rm", &name]));
        }
    }
    if std::env::var_os("FIELDTRACK_KEEP_SITES").is_none() {
        let _ = fs::remove_dir_all(dir);
    }
}

/// Tears down the swarm sites whose test process is gone (`all`: every one, kept ones too).
fn sweep_sites(dir: &Path, manager_host: Option<&str>, all: bool) {
    let Ok(entries) = fs::read_dir(dir.join("sites")) else {
        return;
    };
    for entry in entries.flatten() {
        let site_dir = entry.path();
        let owner = site_dir.join("owner.pid");
        if !all && (!owner.exists() || util::read_pid(&owner).is_some_and(util::pid_alive)) {
            continue;
        }
        if let Some(app) = site_dir.file_name().and_then(|n| n.to_str()) {
            teardown_site(&site_dir, app, manager_host);
        }
    }
}

/// Tears down a kept swarm site by its folder (`testbed swarm site down DIR`).
pub fn teardown_swarm_site_dir(swarm: &Swarm, dir: &Path) {
    if let Some(app) = dir.file_name().and_then(|n| n.to_str()) {
        teardown_site(dir, app, Some(&swarm.manager_host));
    }
}

/// An advisory `flock` on a file, shared or exclusive, held until dropped. Each take opens
/// the file anew, so two holders in one process exclude each other like two processes do.
struct FileLock(fs::File);

impl FileLock {
    fn exclusive(path: &Path) -> Result<FileLock> {
        Self::take(path, libc::LOCK_EX)
    }

    fn shared(path: &Path) -> Result<FileLock> {
        Self::take(path, libc::LOCK_SH)
    }

    fn take(path: &Path, mode: i32) -> Result<FileLock> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| BedError(format!("cannot open {}: {e}", path.display())))?;
        if unsafe { libc::flock(file.as_raw_fd(), mode) } != 0 {
            return err(format!(
                "cannot lock {}: {}",
                path.display(),
                io::Error::last_os_error()
            ));
        }
        Ok(FileLock(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mount(r"/plain"), "/plain");
        assert_eq!(unescape_mount(r"/end\"), r"/end\");
    }

    #[test]
    fn node_addresses_follow_the_edge() {
        assert_eq!(node_addr(1), Ipv4Addr::new(10, 231, 0, 11));
        assert_eq!(node_addr(10), Ipv4Addr::new(10, 231, 0, 20));
        let node = Node::new(Path::new("/x/swarm"), 2);
        assert_eq!(node.name, "ftsw-n2");
        assert_eq!(node.uts_file(), Path::new("/x/swarm/uts/ftsw-n2"));
        assert_eq!(node.docker_host, "unix:///x/swarm/n2/docker.sock");
    }
}
