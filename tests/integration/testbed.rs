//! The test bed itself, end to end: an image pulled from the bed's registry, run by
//! fieldtrack's runtime, answers through the site's nginx. If this fails, every other
//! real-engine test would fail for the same reason; this one says so first.

use std::collections::HashMap;
use std::time::Duration;

use fieldtrack::apply::docker::Docker;
use fieldtrack::model::runtime::{ContainerSpec, Runtime, RuntimeError};
use fieldtrack_testbed::{util, Bed, Site};

#[tokio::test]
async fn pulled_image_serves_its_version_through_the_site_nginx() {
    let bed = Bed::shared();
    let site = Site::new();
    let docker = Docker::connect(&bed.docker_host)
        .await
        .expect("engine answers");

    // A tag nobody pulled yet, so the pull really goes to the registry.
    let alias = format!("bed-{}", site.app);
    let image = bed.push_alias("v1", &alias).expect("alias pushed");
    assert_eq!(
        docker.image(&image).await.unwrap(),
        None,
        "not local before the pull"
    );
    docker
        .pull(&image)
        .await
        .expect("pull from the bed registry");
    assert!(
        docker.image(&image).await.unwrap().is_some(),
        "local after the pull"
    );

    docker
        .run(&ContainerSpec {
            name: format!("{}-blue", site.app),
            image,
            labels: HashMap::from([("fieldtrack.app".to_string(), site.app.clone())]),
            host_port: site.blue_port,
            container_port: 8080,
            env: vec![],
            stop_grace: Duration::from_secs(10),
            settings: Default::default(),
        })
        .await
        .expect("container runs");

    // The site's upstream file points at blue until a first deployment.
    let served = util::wait_until(Duration::from_secs(10), || {
        site.served_version().as_deref() == Some("v1")
    });
    assert!(served, "nginx never served v1: {:?}", site.get("/version"));
    assert_eq!(site.containers(), vec![format!("{}-blue", site.app)]);
}

#[tokio::test]
async fn engine_api_version_is_negotiated_not_pinned() {
    let docker = Docker::connect(&Bed::shared().docker_host).await.unwrap();
    let version = docker.api_version();
    let (major, minor) = version.split_once('.').unwrap();
    assert_eq!(major, "1");
    assert!(minor.parse::<u32>().unwrap() >= 41, "api {version}");
}

#[tokio::test]
async fn a_tag_missing_from_the_registry_is_image_not_found() {
    let bed = Bed::shared();
    let docker = Docker::connect(&bed.docker_host).await.unwrap();
    let err = docker.pull(&bed.image("no-such-tag")).await.unwrap_err();
    assert!(matches!(err, RuntimeError::ImageNotFound { .. }), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn an_unreachable_engine_is_a_transient_error() {
    let err = Docker::connect("unix:///nonexistent/docker.sock")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}

// ---------------------------------------------------------------------------------------
// The multi-node swarm bed (`testbed swarm up`): dockerd nodes in network namespaces.

mod swarm_bed {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use fieldtrack_testbed::{edge_get, util, EdgeLoad, Swarm, SwarmSite};

    /// Generous: the machine may be busy with other tests.
    const PATIENCE: Duration = Duration::from_secs(120);

    /// Removes a service made by a test, also when the test failed.
    struct Service<'a> {
        swarm: &'a Swarm,
        name: String,
    }

    impl Drop for Service<'_> {
        fn drop(&mut self) {
            self.swarm.remove_services(std::slice::from_ref(&self.name));
        }
    }

    /// `docker service create` of the v1 test image: one task per node, each publishing
    /// 8080 in host mode on `port` of its node.
    fn v1_on_every_node<'a>(swarm: &'a Swarm, name: &str, port: u16) -> Service<'a> {
        let service = Service {
            swarm,
            name: name.to_string(),
        };
        util::run(swarm.manager_docker().args([
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
            "--publish",
            &format!("mode=host,target=8080,published={port}"),
            &swarm.image("v1"),
        ]))
        .expect("the service is created");
        service
    }

    #[test]
    fn swarm_has_three_ready_nodes_one_of_them_the_manager() {
        let swarm = Swarm::shared();
        let _steady = swarm.steady();
        assert_eq!(swarm.nodes.len(), 3);
        let listed = util::run(swarm.manager_docker().args([
            "node",
            "ls",
            "--format",
            "{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}",
        ]))
        .expect("the manager lists its nodes");
        let mut lines: Vec<&str> = listed.lines().map(str::trim).collect();
        lines.sort();
        assert_eq!(
            lines,
            vec![
                "ftsw-n1 Ready Active Leader",
                "ftsw-n2 Ready Active",
                "ftsw-n3 Ready Active",
            ],
            "each node has a hostname of its own"
        );
        for node in &swarm.nodes {
            let info = util::run(node.docker().args([
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.NodeAddr}} {{.Swarm.ControlAvailable}}",
            ]))
            .expect("each node's engine answers on its own socket");
            assert_eq!(
                info.trim(),
                format!("active {} {}", node.addr, node.is_manager()),
                "{}",
                node.name
            );
        }
    }

    #[test]
    fn swarm_service_with_host_ports_answers_on_every_node_address_from_the_edge() {
        let swarm = Swarm::shared();
        let _steady = swarm.steady();
        let port = swarm.node_ports(1).expect("a port")[0];
        let name = format!("bed-{}-{port}", std::process::id());
        let _service = v1_on_every_node(swarm, &name, port);

        // Every node pulls the image from the edge registry, which serves the bed's images.
        let all_answer = util::wait_until(PATIENCE, || {
            swarm.nodes.iter().all(|node| {
                matches!(edge_get(node.socket(port), "/version"),
                    Ok((200, body)) if body.trim() == "v1")
            })
        });
        let answers: Vec<_> = swarm
            .nodes
            .iter()
            .map(|n| (n.addr, edge_get(n.socket(port), "/version")))
            .collect();
        assert!(all_answer, "not every node answers v1: {answers:?}");

        let tasks = swarm.tasks(&name);
        let nodes: BTreeSet<_> = tasks
            .iter()
            .filter(|t| t.state == "running")
            .filter_map(|t| t.node.clone())
            .collect();
        let all: BTreeSet<_> = swarm.nodes.iter().map(|n| n.name.clone()).collect();
        assert_eq!(nodes, all, "one running task per node: {tasks:?}");

        // The load generator runs in the edge too, and counts what it gets.
        let load = EdgeLoad::start(swarm.nodes[1].socket(port), "/version").expect("load starts");
        std::thread::sleep(Duration::from_millis(500));
        let report = load.stop();
        assert!(report.ok > 0, "{report:?}");
        assert_eq!(report.failed, 0, "{report:?}");
        assert_eq!(
            report.by_body.keys().collect::<Vec<_>>(),
            vec!["v1"],
            "{report:?}"
        );
    }

    #[test]
    fn swarm_site_nginx_in_the_edge_proxies_to_node_addresses_and_drop_removes_services() {
        let swarm = Swarm::shared();
        let _steady = swarm.steady();
        let site = SwarmSite::create(swarm, Default::default()).expect("a swarm site");
        let config = site.config_text();
        for line in [
            "kind = \"swarm\"".to_string(),
            "replicas = 3".to_string(),
            "max_replicas_per_node = 1".to_string(),
            format!("host = \"{}\"", swarm.manager_host),
            format!("repository = \"{}\"", swarm.repository),
        ] {
            assert!(config.contains(&line), "{line} in:\n{config}");
        }
        assert_eq!(site.served_version(), None, "nothing is deployed yet");

        // What fieldtrack's swarm runtime will do, by hand: the blue service, the node
        // addresses in the upstream file, nginx reloaded.
        let _service = v1_on_every_node(swarm, &site.service("blue"), site.blue_port);
        let servers: String = swarm
            .nodes
            .iter()
            .map(|n| format!("    server {};\n", n.socket(site.blue_port)))
            .collect();
        std::fs::write(
            &site.upstream_file,
            format!("upstream {} {{\n{servers}}}\n", site.upstream_name),
        )
        .unwrap();
        let prefix = site.dir.join("nginx");
        util::run(
            Swarm::edge_command(&swarm.bed.nginx)
                .arg("-p")
                .arg(&prefix)
                .arg("-c")
                .arg(prefix.join("nginx.conf"))
                .args(["-s", "reload"]),
        )
        .expect("nginx reloads");
        let served = util::wait_until(PATIENCE, || {
            site.served_version().as_deref() == Some("v1")
                && swarm
                    .nodes
                    .iter()
                    .all(|n| edge_get(n.socket(site.blue_port), "/version").is_ok())
        });
        assert!(
            served,
            "nginx in the edge never served v1: {:?}",
            site.get("/version")
        );

        // The site removes its services itself; `_service` only covers a failure above.
        let name = site.service("blue");
        drop(site);
        let gone = util::run(
            swarm
                .manager_docker()
                .args(["service", "ls", "-q", "--filter"])
                .arg(format!("name={name}")),
        )
        .expect("the manager lists services");
        assert_eq!(gone.trim(), "", "the site's service is removed with it");
    }

    #[test]
    fn swarm_partitioned_worker_goes_down_and_comes_back_when_healed() {
        let swarm = Swarm::shared();
        let _faults = swarm.faults();
        let worker = &swarm.nodes[2];
        swarm.partition(worker).expect("link down");
        assert!(
            swarm.wait_node_state(worker, "down", PATIENCE),
            "the manager never saw {} down: {:?}",
            worker.name,
            swarm.node_state(worker)
        );
        swarm.heal(worker).expect("link up");
        assert!(
            swarm.wait_node_state(worker, "ready", PATIENCE),
            "{} never came back: {:?}",
            worker.name,
            swarm.node_state(worker)
        );
    }

    #[test]
    fn swarm_killed_engine_goes_down_and_restarts_into_the_swarm() {
        let swarm = Swarm::shared();
        let _faults = swarm.faults();
        let worker = &swarm.nodes[1];
        let before = worker.engine_pid().expect("the worker's dockerd runs");
        swarm.kill_engine(worker).expect("SIGKILL");
        assert!(!util::pid_alive(before));
        assert!(
            swarm.wait_node_state(worker, "down", PATIENCE),
            "the manager never saw {} down: {:?}",
            worker.name,
            swarm.node_state(worker)
        );
        swarm.restart_engine(worker).expect("dockerd starts again");
        assert_ne!(worker.engine_pid(), Some(before));
        assert!(
            swarm.wait_node_state(worker, "ready", PATIENCE),
            "{} never rejoined: {:?}",
            worker.name,
            swarm.node_state(worker)
        );
    }

    #[test]
    fn swarm_drained_node_is_drained_until_activated() {
        let swarm = Swarm::shared();
        let _faults = swarm.faults();
        let worker = &swarm.nodes[2];
        swarm.drain(worker).expect("drain");
        assert_eq!(
            swarm.node_state(worker),
            Some(("ready".to_string(), "drain".to_string()))
        );
        swarm.activate(worker).expect("activate");
        assert_eq!(
            swarm.node_state(worker),
            Some(("ready".to_string(), "active".to_string()))
        );
    }
}
