//! `[container]` settings on the real three-node Swarm: the service spec carries them, each
//! task's container on its node has them, and a change of one is a blue/green deployment.
//!
//! The app joins an attachable overlay network made for the test, on which a `db` service
//! of the test answers on the manager; `NEEDS` makes the app's health depend on reaching it
//! by name, so a task on a worker that did not really join the network never passes the
//! gate.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::swarm::*;
use crate::common::{wait_for, wait_until, PATIENCE};
use fieldtrack_testbed::{Swarm, SwarmSite};

/// Networks and services a test made on the cluster beside its site, removed when dropped:
/// declared before the site, so that the site's services are gone first and the networks
/// have no endpoint left.
struct ClusterObjects {
    swarm: Swarm,
    services: Vec<String>,
    networks: Vec<String>,
}

impl ClusterObjects {
    fn new(swarm: &Swarm) -> ClusterObjects {
        ClusterObjects {
            swarm: swarm.clone(),
            services: Vec::new(),
            networks: Vec::new(),
        }
    }

    /// `docker network create --driver DRIVER [--attachable] NAME` on the manager.
    fn network(&mut self, name: &str, driver: &str) {
        let mut cmd = self.swarm.manager_docker();
        cmd.args(["network", "create", "--driver", driver]);
        if driver == "overlay" {
            cmd.arg("--attachable");
        }
        run_ok(cmd.arg(name));
        self.networks.push(name.to_string());
    }

    /// A service of the test (no fieldtrack label: fieldtrack would remove it as a stray).
    fn service(&mut self, name: &str, args: &[&str]) {
        let mut cmd = self.swarm.manager_docker();
        cmd.args(["service", "create", "--detach", "--name", name]);
        run_ok(cmd.args(args));
        self.services.push(name.to_string());
    }

    /// The network's ID, which a service spec names once the manager resolved the name.
    fn network_id(&self, name: &str) -> String {
        let mut cmd = self.swarm.manager_docker();
        run_ok(cmd.args(["network", "inspect", "--format", "{{.Id}}", name]))
            .trim()
            .to_string()
    }
}

impl Drop for ClusterObjects {
    fn drop(&mut self) {
        for service in &self.services {
            let _ = self
                .swarm
                .manager_docker()
                .args(["service", "rm", service])
                .output();
        }
        // A network goes once the last task's endpoint on it has; tasks end after a moment.
        for network in &self.networks {
            let gone = (0..120).any(|_| {
                let out = self
                    .swarm
                    .manager_docker()
                    .args(["network", "rm", network])
                    .output();
                let done = out.is_ok_and(|o| {
                    o.status.success() || String::from_utf8_lossy(&o.stderr).contains("not found")
                });
                if !done {
                    std::thread::sleep(Duration::from_millis(500));
                }
                done
            });
            if !gone {
                eprintln!("network {network} could not be removed");
            }
        }
    }
}

#[track_caller]
fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("docker runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker service inspect` of a color's service: its `Spec.TaskTemplate`.
fn task_template(site: &SwarmSite, color: &str) -> Value {
    let out = run_ok(site.docker().args([
        "service",
        "inspect",
        "--format",
        "{{json .Spec.TaskTemplate}}",
        &site.service(color),
    ]));
    serde_json::from_str(&out).expect("the task template is JSON")
}

/// Each running task's container of a color, inspected on its own node's engine:
/// (node name, `docker inspect` of the container).
fn task_containers(site: &SwarmSite, color: &str) -> Vec<(String, Value)> {
    let service = site.service(color);
    let mut found = Vec::new();
    for node in &site.swarm.nodes {
        let ids = run_ok(node.docker().args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
        ]));
        for id in ids.split_whitespace() {
            let out = run_ok(node.docker().args(["inspect", id]));
            let mut inspect: Value = serde_json::from_str(&out).expect("docker inspect is JSON");
            found.push((node.name.clone(), inspect[0].take()));
        }
    }
    found
}

/// The limit and the network, as the service spec and every task's container have them.
#[track_caller]
fn assert_runs_with(site: &SwarmSite, color: &str, network: &str, network_id: &str, memory: u64) {
    let template = task_template(site, color);
    assert_eq!(
        template["Resources"]["Limits"]["MemoryBytes"].as_u64(),
        Some(memory),
        "{template}"
    );
    let targets: Vec<&str> = template["Networks"]
        .as_array()
        .map(|n| n.iter().filter_map(|n| n["Target"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        targets == [network_id] || targets == [network],
        "the service joins {network} ({network_id}): {template}"
    );
    // Stop-first: the tasks of the spec in force are the ones running now.
    let containers = wait_for(PATIENCE, "a running container per task", || {
        let found = task_containers(site, color);
        (found.len() == 3).then_some(found)
    });
    for (node, container) in containers {
        assert_eq!(
            container["HostConfig"]["Memory"].as_u64(),
            Some(memory),
            "the task's container on {node}"
        );
        assert!(
            container["NetworkSettings"]["Networks"]
                .get(network)
                .is_some(),
            "the task's container on {node} joined {network}: {}",
            container["NetworkSettings"]["Networks"]
        );
    }
}

#[test]
fn on_swarm_the_tasks_join_an_overlay_network_with_a_memory_limit_and_a_change_redeploys() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let mut objects = ClusterObjects::new(swarm);
    let mut site = SwarmSite::new();
    patient_health(&mut site);
    site.set("rollout.drain", "\"1s\"");

    let network = format!("{}-net", site.app);
    objects.network(&network, "overlay");
    let network_id = objects.network_id(&network);
    // The app's database, on the manager; dnsrr: its name resolves to the task itself
    // (a VIP needs IPVS, which this machine's kernel lacks).
    let db = format!("{}-db", site.app);
    objects.service(
        &db,
        &[
            "--network",
            &network,
            "--endpoint-mode",
            "dnsrr",
            "--constraint",
            "node.role==manager",
            &swarm.image("v1"),
        ],
    );
    std::fs::write(site.dir.join(".env"), format!("NEEDS={db}:8080\n")).unwrap();
    site.set("container.networks", &format!("[\"{network}\"]"));
    site.set("container.memory", "\"64m\"");

    deploy_ok(&site, "v1");
    let first = live_color(&site);
    assert_eq!(upstream_addrs(&site).len(), 3, "{}", upstream(&site));
    assert_runs_with(&site, first, &network, &network_id, 64 << 20);

    // A changed limit is drift: the same image goes blue/green into the other color.
    site.set("container.memory", "\"96m\"");
    let plan = ft(&site, &["plan"]);
    plan.expect_code(3);
    assert!(
        plan.stdout.contains("container.memory"),
        "plan names the setting:\n{}",
        plan.stdout
    );
    let run = ft(&site, &["reconcile"]);
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"), "{}", run.stderr);
    let second = live_color(&site);
    assert_ne!(second, first, "a new color, not an in-place restart");
    assert_runs_with(&site, second, &network, &network_id, 96 << 20);
    wait_until(PATIENCE, "the old color scaled to 0", || {
        replicas(&site, first) == Some(0)
    });
    assert_eq!(history(&site), "v1\n");
}

#[test]
fn on_swarm_a_network_that_is_not_swarm_scoped_is_refused_naming_it_and_production_stays() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let mut objects = ClusterObjects::new(swarm);
    let mut site = SwarmSite::new();
    patient_health(&mut site);
    site.set("rollout.drain", "\"1s\"");
    deploy_ok(&site, "v1");
    let live = live_color(&site);
    let before = upstream(&site);

    let bridge = format!("{}-br", site.app);
    objects.network(&bridge, "bridge");
    site.set("container.networks", &format!("[\"{bridge}\"]"));
    let run = ft(&site, &["deploy", "v2"]);
    run.expect_code(1);
    for words in [
        format!("container.networks (\"{bridge}\")"),
        "its driver is bridge and its scope local".to_string(),
    ] {
        assert!(run.stderr.contains(&words), "{words}:\n{}", run.stderr);
    }
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), before);
    assert_eq!(live_color(&site), live);
    let idle = idle_color(&site);
    assert!(
        replicas(&site, idle).is_none_or(|n| n == 0),
        "the idle color runs nothing"
    );
    assert_eq!(history(&site), "v1\n");
}

/// A bind mount reads its path on the node that runs the task: here every node shares the
/// machine's file system. A path no node has fails the attempt with Swarm's own words,
/// before any switch; one they all have is mounted read-only where asked, beside a sized
/// tmpfs, and `host-gateway` is resolved by each node's engine.
#[test]
fn on_swarm_bind_mounts_tmpfs_and_host_gateway_reach_every_task_and_a_missing_bind_source_fails() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let mut site = SwarmSite::new();
    patient_health(&mut site);
    site.set("rollout.drain", "\"1s\"");
    deploy_ok(&site, "v1");
    let live = live_color(&site);
    let before = upstream(&site);

    let shared = site.dir.join("shared");
    let bind = |ro: &str| format!("[\"{}:/srv/shared{ro}\"]", shared.display());
    site.set("container.volumes", &bind(":ro"));
    let run = ft(&site, &["deploy", "v2"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("bind source path does not exist"),
        "Swarm's reason is quoted:\n{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), before);
    assert_eq!(live_color(&site), live);

    std::fs::create_dir_all(&shared).unwrap();
    site.set("container.tmpfs", "[\"/scratch:size=8m,mode=1777\"]");
    site.set("container.extra_hosts", "[\"gateway.test:host-gateway\"]");
    deploy_ok(&site, "v2");
    let color = live_color(&site);
    let containers = wait_for(PATIENCE, "a running container per task", || {
        let found = task_containers(&site, color);
        (found.len() == 3).then_some(found)
    });
    for (node, container) in containers {
        let mounts = container["HostConfig"]["Mounts"].as_array().cloned();
        let mounts = mounts.unwrap_or_default();
        let find = |target: &str| {
            mounts
                .iter()
                .find(|m| m["Target"] == target)
                .cloned()
                .unwrap_or_else(|| panic!("{target} is mounted on {node}: {mounts:?}"))
        };
        let bound = find("/srv/shared");
        assert_eq!(bound["Type"], "bind", "{bound}");
        assert_eq!(bound["ReadOnly"], true, "{bound}");
        let scratch = find("/scratch");
        assert_eq!(scratch["Type"], "tmpfs", "{scratch}");
        assert_eq!(scratch["TmpfsOptions"]["SizeBytes"], 8 << 20, "{scratch}");
        assert_eq!(scratch["TmpfsOptions"]["Mode"], 0o1777, "{scratch}");
        assert_eq!(
            container["HostConfig"]["ExtraHosts"],
            serde_json::json!(["gateway.test:host-gateway"]),
            "on {node}"
        );
        // The node's engine wrote the address it resolved into the container's hosts file.
        let hosts_path = container["HostsPath"].as_str().expect("a hosts file");
        let hosts = std::fs::read_to_string(hosts_path).expect("the hosts file is readable");
        let line = hosts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("gateway.test"))
            .unwrap_or_else(|| panic!("gateway.test in the hosts file on {node}:\n{hosts}"));
        let address = line.split_whitespace().next().unwrap_or_default();
        assert!(
            address.parse::<std::net::IpAddr>().is_ok(),
            "host-gateway resolved to an address on {node}: {line}"
        );
    }
}
