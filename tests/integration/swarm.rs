//! fieldtrack on a real multi-node Docker Swarm: three dockerd nodes in network namespaces,
//! nginx and fieldtrack in the edge namespace (see testbed/src/swarm.rs). Each color is a
//! service whose tasks publish the color's port in host mode on their nodes; the upstream
//! file lists one `server NODE:PORT;` per task that answered its probe.
//!
//! Tests that leave the cluster as it is take [`Swarm::steady`] (side by side); those that
//! break nodes take [`Swarm::faults`] (alone; every node is made healthy again after).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::common::swarm::*;
use crate::common::{self, wait_for, wait_until, PATIENCE};
use fieldtrack_testbed::{EdgeLoad, Swarm, SwarmSite};

/// A site of three replicas (one per node), a patient health gate and a short drain.
fn site() -> SwarmSite {
    let mut site = SwarmSite::new();
    patient_health(&mut site);
    site.set("rollout.drain", "\"1s\"");
    site.set("swarm.replicas", "3");
    site
}

fn node_addrs(swarm: &Swarm) -> BTreeSet<Ipv4Addr> {
    swarm.nodes.iter().map(|n| n.addr).collect()
}

/// Replicas of a color's service as the manager has them set (None: no such service).
fn set_replicas(site: &SwarmSite, color: &str) -> Option<u64> {
    replicas(site, color)
}

#[test]
fn deploy_and_rollback_run_one_task_per_node_and_nginx_names_all_three() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let site = site();

    deploy_ok(&site, "v1");
    // The site's placeholder upstream points at blue: the first deployment goes to green.
    let first = live_color(&site);
    let second = idle_color(&site);
    assert_eq!(
        upstream_addrs(&site),
        node_addrs(swarm),
        "{}",
        upstream(&site)
    );
    assert_eq!(running_nodes(&site, first).len(), 3);
    let pinned = service_image(&site, first).expect("the live service exists");
    assert!(
        pinned.contains("@sha256:"),
        "the image is pinned by digest: {pinned}"
    );

    deploy_ok(&site, "v2");
    assert_eq!(live_color(&site), second);
    assert_eq!(
        upstream_addrs(&site),
        node_addrs(swarm),
        "{}",
        upstream(&site)
    );
    wait_until(PATIENCE, "the old color scaled to 0", || {
        set_replicas(&site, first) == Some(0)
    });
    assert_eq!(history(&site), "v2\nv1\n");

    let run = ft(&site, &["rollback", "--yes"]);
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"), "{}", run.stderr);
    assert_eq!(live_color(&site), first);
    assert_eq!(upstream_addrs(&site), node_addrs(swarm));
    assert_eq!(history(&site), "v1\nv2\n");

    // The status names each task with its node, as the next pass sees them.
    ft(&site, &["reconcile"]).expect_code(0);
    let status = status(&site);
    let tasks = status["replicas"]
        .as_array()
        .expect("status.json lists the replicas");
    let live = tasks
        .iter()
        .find(|c| c["color"] == first)
        .expect("the live color's tasks");
    assert_eq!(
        live["replicas"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    let text = ft(&site, &["status"]);
    text.expect_code(0);
    assert!(
        text.stdout.contains(&format!("Tasks     : {first}")),
        "{}",
        text.stdout
    );
}

#[test]
fn an_unhealthy_image_leaves_production_untouched_and_the_idle_color_at_zero() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let mut site = site();
    deploy_ok(&site, "v1");
    let before = upstream(&site);
    short_health(&mut site);

    let run = ft(&site, &["deploy", "unhealthy"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("did not become healthy"),
        "{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), before);
    let idle = idle_color(&site);
    wait_until(PATIENCE, "the candidate scaled back to 0", || {
        set_replicas(&site, idle) == Some(0)
    });
    assert_eq!(history(&site), "v1\n");
}

#[test]
fn a_crashing_image_fails_at_once_naming_the_exit() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let site = site();
    deploy_ok(&site, "v1");
    let before = upstream(&site);

    let run = ft(&site, &["deploy", "crash"]);
    run.expect_code(1);
    assert!(run.stderr.contains("exit"), "{}", run.stderr);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), before);
    let idle = idle_color(&site);
    wait_until(PATIENCE, "the candidate scaled back to 0", || {
        set_replicas(&site, idle) == Some(0)
    });
}

#[test]
fn a_color_failing_during_the_drain_sends_traffic_back_and_rewrites_the_desired_file() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let mut site = site();
    deploy_ok(&site, "v1");
    // `flaky` answers its health, then 500 after 3 s: inside this drain.
    site.set("rollout.drain", "\"15s\"");

    let first = live_color(&site);
    let run = ft(&site, &["deploy", "flaky"]);
    run.expect_code(1);
    assert_eq!(served(&site).as_deref(), Some("v1"), "{}", run.stderr);
    assert_eq!(live_color(&site), first);
    assert_eq!(upstream_addrs(&site), node_addrs(swarm));
    let desired = desired(&site).expect("the desired file");
    assert!(desired.contains("image = \"v1\""), "{desired}");
    assert_eq!(history(&site), "v1\n");
}

/// A replica of the live color that was killed and that Swarm restarted leaves a failed
/// task in the service's history: the color still runs, so a new color failing in its drain
/// sends traffic back to it.
#[test]
fn a_replica_swarm_restarted_once_does_not_keep_its_color_from_taking_traffic_back() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let mut site = site();
    deploy_ok(&site, "v1");
    let first = live_color(&site);
    let service = site.service(first);

    // SIGKILL one task's container on a worker: exit 137, and Swarm starts a new task.
    let node = &swarm.workers()[0];
    let out = swarm
        .docker(node)
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
        ])
        .output()
        .expect("docker runs");
    let container = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !container.is_empty(),
        "a task of {service} runs on {}",
        node.name
    );
    let killed = swarm
        .docker(node)
        .args(["kill", &container])
        .output()
        .expect("docker runs");
    assert!(killed.status.success(), "{killed:?}");
    wait_for(
        Duration::from_secs(120),
        "Swarm to replace the killed task and run three again",
        || {
            let tasks = tasks_per_node(&site, first);
            let failed = tasks.values().flatten().any(|t| t.starts_with("failed/"));
            (failed && running_nodes(&site, first).len() == 3).then_some(())
        },
    );

    // `flaky` answers its health, then 500 after 3 s: inside this drain.
    site.set("rollout.drain", "\"15s\"");
    let run = ft(&site, &["deploy", "flaky"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains(&format!("traffic is back on {first}")),
        "{}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"), "{}", run.stderr);
    assert_eq!(live_color(&site), first);
    let desired = desired(&site).expect("the desired file");
    assert!(desired.contains("image = \"v1\""), "{desired}");
}

#[test]
fn a_kill_at_any_step_is_finished_by_the_next_pass() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let site = site();
    deploy_ok(&site, "v1");
    let mut tag = 1;
    for step in [
        "pulling",
        "starting",
        "health",
        "reload",
        "draining",
        "cleanup",
        "recording",
    ] {
        tag += 1;
        let tag = format!("v{tag}");
        let mut run = spawn(&site, &["deploy", &tag], Some(step));
        run.wait_for_line(&format!("test pause at {step}"));
        run.kill();

        let converge = ft(&site, &["reconcile"]);
        converge.expect_code(0);
        assert_eq!(
            served(&site).as_deref(),
            Some(tag.as_str()),
            "killed at {step}: {}",
            converge.stderr
        );
        assert_eq!(
            upstream_addrs(&site),
            node_addrs(swarm),
            "killed at {step}: {}",
            upstream(&site)
        );
        let idle = idle_color(&site);
        wait_until(
            PATIENCE,
            &format!("killed at {step}: {idle} scaled to 0"),
            || set_replicas(&site, idle).is_none_or(|n| n == 0),
        );
        assert!(
            history(&site).starts_with(&format!("{tag}\n")),
            "killed at {step}: {}",
            history(&site)
        );
    }
}

#[test]
fn a_service_changed_by_hand_is_replaced_blue_green() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let site = site();
    deploy_ok(&site, "v1");
    let first = live_color(&site);
    let service = format!("{}-{first}", site.app);

    // Scaled down by hand: one replica less than the config wants.
    let out = swarm
        .manager_docker()
        .args(["service", "scale", "--detach", &format!("{service}=2")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let run = ft(&site, &["reconcile"]);
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"), "{}", run.stderr);
    let second = idle_color(&site);
    assert_ne!(live_color(&site), first, "{}", run.stderr);
    assert_eq!(set_replicas(&site, live_color(&site)), Some(3));
    assert_eq!(upstream_addrs(&site), node_addrs(swarm));
    wait_until(PATIENCE, "the edited service scaled to 0", || {
        set_replicas(&site, second) == Some(0)
    });
    // And in sync once the edited service's tasks have ended.
    let mut last = String::new();
    let in_sync = (0..120).any(|_| {
        let plan = command(&site, &["plan"]).output().unwrap();
        last = String::from_utf8_lossy(&plan.stdout).into_owned();
        let done = plan.status.code() == Some(0);
        if !done {
            std::thread::sleep(Duration::from_millis(500));
        }
        done
    });
    assert!(in_sync && last.contains("In sync"), "{last}");

    // The live service removed by hand: nothing is live, the desired image comes back.
    let live = format!("{}-{}", site.app, live_color(&site));
    let out = swarm
        .manager_docker()
        .args(["service", "rm", &live])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let run = ft(&site, &["reconcile"]);
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"), "{}", run.stderr);
    assert_eq!(upstream_addrs(&site), node_addrs(swarm));
}

#[test]
fn constraints_place_the_tasks_and_the_env_file_reaches_them() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let mut site = site();
    let node = &swarm.nodes[1];
    site.set("swarm.replicas", "1");
    site.set(
        "swarm.constraints",
        &format!("[\"node.hostname=={}\"]", node.name),
    );
    std::fs::write(site.dir.join(".env"), "GREETING=hello-from-the-env-file\n").unwrap();
    deploy_ok(&site, "v1");
    let expected: BTreeSet<Ipv4Addr> = [node.addr].into();
    assert_eq!(upstream_addrs(&site), expected, "{}", upstream(&site));
    let service = format!("{}-{}", site.app, live_color(&site));
    let out = swarm
        .manager_docker()
        .args([
            "service",
            "inspect",
            "--format",
            "{{json .Spec.TaskTemplate.ContainerSpec.Env}}",
            &service,
        ])
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(env.contains("GREETING=hello-from-the-env-file"), "{env}");
    // Never printed by fieldtrack.
    let status = ft(&site, &["status"]);
    assert!(!status.stdout.contains("hello-from-the-env-file"));
}

#[test]
fn two_processes_racing_one_converges_the_other_reports_the_lock() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let site = site();
    deploy_ok(&site, "v1");
    std::fs::write(&site.desired_file, "image = \"v2\"\n").unwrap();

    let first = spawn(&site, &["reconcile"], None);
    let second = spawn(&site, &["reconcile"], None);
    let (a, a_err) = first.finish();
    let (b, b_err) = second.finish();
    assert_eq!(served(&site).as_deref(), Some("v2"), "{a_err}\n{b_err}");
    assert_eq!((a, b), (0, 0), "{a_err}\n---\n{b_err}");
    let waited = "waiting for the reconcile lock, held by";
    assert!(
        a_err.contains(waited) || b_err.contains(waited),
        "one reports the lock: {a_err}\n---\n{b_err}"
    );
    assert_eq!(upstream_addrs(&site), node_addrs(swarm));
    assert_eq!(history(&site), "v2\nv1\n");
}

/// A daemon with a short resync follows the cluster: `replicas` tasks, one per node.
fn daemon_site(replicas: u64) -> (SwarmSite, common::Spawned) {
    let mut site = site();
    site.set("swarm.replicas", &replicas.to_string());
    site.set("rollout.resync", "\"2s\"");
    deploy_ok(&site, "v1");
    let daemon = spawn(&site, &["daemon"], None);
    (site, daemon)
}

#[test]
fn a_partitioned_worker_leaves_the_upstream_and_its_replacement_enters_after_its_probe() {
    let swarm = Swarm::shared();
    let _use = swarm.faults();
    let (site, daemon) = daemon_site(2);
    let load = EdgeLoad::start(site.nginx_addr(), "/version").expect("load starts");

    let before = upstream_addrs(&site);
    assert_eq!(before.len(), 2);
    let victim = swarm
        .workers()
        .iter()
        .find(|n| before.contains(&n.addr))
        .expect("a worker runs a task")
        .clone();
    swarm.partition(&victim).unwrap();
    let after = wait_for(Duration::from_secs(90), "the upstream follows", || {
        let now = upstream_addrs(&site);
        (now.len() == 2 && !now.contains(&victim.addr)).then_some(now)
    });
    let report = load.stop();
    eprintln!(
        "partition: upstream {before:?} -> {after:?}; load {} ok, {} failed {:?}",
        report.ok, report.failed, report.first_failures
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));

    swarm.heal(&victim).unwrap();
    assert!(swarm.wait_node_state(&victim, "ready", Duration::from_secs(90)));
    daemon.kill();
}

#[test]
fn a_worker_whose_engine_is_killed_leaves_the_upstream() {
    let swarm = Swarm::shared();
    let _use = swarm.faults();
    let (site, daemon) = daemon_site(3);
    let victim = swarm.workers()[0].clone();
    swarm.kill_engine(&victim).unwrap();
    wait_for(Duration::from_secs(90), "the dead node leaves", || {
        let now = upstream_addrs(&site);
        (now.len() == 2 && !now.contains(&victim.addr)).then_some(now)
    });
    assert_eq!(served(&site).as_deref(), Some("v1"));
    // The status shows the loss: the dead node's task, marked.
    let text = ft(&site, &["status"]);
    eprintln!("{}", text.stdout);
    assert!(text.stdout.contains("(node down)"), "{}", text.stdout);
    daemon.kill();
}

#[test]
fn a_drained_node_leaves_the_upstream_and_the_task_moves() {
    let swarm = Swarm::shared();
    let _use = swarm.faults();
    let (site, daemon) = daemon_site(2);
    let before = upstream_addrs(&site);
    let victim = swarm
        .nodes
        .iter()
        .find(|n| before.contains(&n.addr))
        .expect("a node runs a task")
        .clone();
    swarm.drain(&victim).unwrap();
    let after = wait_for(Duration::from_secs(90), "the task moves", || {
        let now = upstream_addrs(&site);
        (now.len() == 2 && !now.contains(&victim.addr)).then_some(now)
    });
    assert_ne!(before, after);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    daemon.kill();
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate signed by that CA, in
/// `dir`, made with openssl as `docker --tlsverify` users make them; `prefix` names the set.
fn certificates(dir: &std::path::Path, prefix: &str) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={prefix} test CA"),
        "-keyout",
        &format!("{prefix}ca-key.pem"),
        "-out",
        &format!("{prefix}ca.pem"),
    ]);
    for (who, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{prefix}{who}.ext")), ext).unwrap();
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={who}"),
            "-keyout",
            &format!("{prefix}{who}-key.pem"),
            "-out",
            &format!("{prefix}{who}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &format!("{prefix}{who}.csr"),
            "-CA",
            &format!("{prefix}ca.pem"),
            "-CAkey",
            &format!("{prefix}ca-key.pem"),
            "-CAcreateserial",
            "-extfile",
            &format!("{prefix}{who}.ext"),
            "-out",
            &format!("{prefix}{who}.pem"),
        ]);
    }
}

#[test]
fn the_manager_is_reached_over_tls_with_client_certificates() {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let mut site = site();
    let dir = site.dir.join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir, "");
    certificates(&dir, "other-");
    // The manager's API behind mutual TLS, on the edge namespace's loopback: nginx's stream
    // module checks the client's certificate against the CA and forwards to the socket (its
    // workers run as root: the socket is root's).
    let port = fieldtrack_testbed::in_netns(&swarm.edge_netns, || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    })
    .unwrap();
    let socket = swarm
        .manager_host
        .strip_prefix("unix://")
        .expect("the manager's unix socket");
    let prefix = dir.join("front");
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off;\nuser root;\npid {pid};\nerror_log {prefix}/logs/error.log;\n\
             events {{}}\n\
             stream {{\n  server {{\n    listen 127.0.0.1:{port} ssl;\n\
             ssl_certificate {dir}/server.pem;\n    ssl_certificate_key {dir}/server-key.pem;\n\
             ssl_client_certificate {dir}/ca.pem;\n    ssl_verify_client on;\n\
             proxy_pass unix:{socket};\n  }}\n}}\n",
            pid = prefix.join("nginx.pid").display(),
            prefix = prefix.display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    // Stopped when the test ends, failed or not; its output goes to its error log, never to
    // the test's own (a process left holding that pipe keeps `scripts/test.sh` waiting).
    let _front = Front(
        Swarm::edge_command("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx starts"),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(PATIENCE, "the TLS front listens", || {
        fieldtrack_testbed::edge_listens(addr)
    });

    site.set("docker.host", &format!("\"tcp://127.0.0.1:{port}\""));
    for (key, file) in [
        ("tls_ca", "ca.pem"),
        ("tls_cert", "client.pem"),
        ("tls_key", "client-key.pem"),
    ] {
        site.set(
            &format!("docker.{key}"),
            &format!("\"{}\"", dir.join(file).display()),
        );
    }
    deploy_ok(&site, "v1");
    assert_eq!(upstream_addrs(&site), node_addrs(swarm));

    // A client certificate of another CA: refused by the manager's side, and nothing changes.
    site.set(
        "docker.tls_cert",
        &format!("\"{}\"", dir.join("other-client.pem").display()),
    );
    site.set(
        "docker.tls_key",
        &format!("\"{}\"", dir.join("other-client-key.pem").display()),
    );
    let before = upstream(&site);
    let run = ft(&site, &["deploy", "v2"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("TLS handshake with the docker engine at tcp://127.0.0.1"),
        "the error names the engine and the handshake: {}",
        run.stderr
    );
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(upstream(&site), before);

    // A key anyone may rewrite is refused before anything is asked, naming the file.
    use std::os::unix::fs::PermissionsExt as _;
    let key = dir.join("other-client-key.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = ft(&site, &["deploy", "v2"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("other-client-key.pem"),
        "{}",
        run.stderr
    );
    assert_eq!(upstream(&site), before);
}

/// The TLS front's nginx, stopped on drop.
struct Front(std::process::Child);

impl Drop for Front {
    fn drop(&mut self) {
        // SIGTERM to the master (nsenter execs it): it stops its workers too.
        let _ = std::process::Command::new("kill")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

#[test]
fn a_port_held_a_moment_longer_on_a_node_delays_the_candidate_without_failing_it() {
    // A node's engine may release the host port of the color's last task a moment after
    // the task ended; here a container of its own holds it for 4 s on one node. Swarm starts
    // the rejected task again; the attempt waits for it instead of failing.
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let site = site();
    deploy_ok(&site, "v1");
    let port = if idle_color(&site) == "blue" {
        site.blue_port
    } else {
        site.green_port
    };
    let node = swarm.nodes[1].clone();
    let blocker = format!("{}-blocker", site.app);
    let out = swarm
        .docker(&node)
        .args(["run", "-d", "--name", &blocker, "-p"])
        .arg(format!("{port}:8080"))
        .arg(swarm.image("v1"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let release = {
        let (swarm, node, blocker) = (swarm.clone(), node.clone(), blocker.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(4));
            let _ = swarm.docker(&node).args(["rm", "-f", &blocker]).output();
        })
    };
    let run = ft(&site, &["deploy", "v2"]);
    release.join().unwrap();
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v2"), "{}", run.stderr);
    assert_eq!(upstream_addrs(&site), node_addrs(swarm));
}

#[test]
fn back_to_back_deploys_reuse_the_color_just_scaled_down() {
    // The color scaled to 0 by one deployment is updated by the next one at once: its node's
    // engine may still hold the host port a moment after the old tasks ended.
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let mut site = site();
    site.set("rollout.drain", "\"0s\"");
    deploy_ok(&site, "v1");
    // Under load: the old tasks hold connections until they end.
    let load = EdgeLoad::start(site.nginx_addr(), "/version").expect("load starts");
    for tag in ["v2", "v3", "v4", "v5", "v6", "v7"] {
        deploy_ok(&site, tag);
        assert_eq!(upstream_addrs(&site), node_addrs(swarm), "{tag}");
    }
    let report = load.stop();
    assert_eq!(report.failed, 0, "{:?}", report.first_failures);
}

#[test]
fn keep_previous_keeps_the_old_service_at_its_replicas_and_a_rollback_inside_the_window_is_a_switch(
) {
    let swarm = Swarm::shared();
    let _use = swarm.steady();
    let mut site = site();
    site.set("rollout.keep_previous", "\"15m\"");
    deploy_ok(&site, "v1");
    let first = live_color(&site);
    let first_image = service_image(&site, first).expect("the first service");
    deploy_ok(&site, "v2");
    // The old service keeps its tasks, out of nginx.
    assert_eq!(set_replicas(&site, first), Some(3));
    assert_eq!(running_nodes(&site, first).len(), 3);
    assert_ne!(live_color(&site), first);
    assert_eq!(status(&site)["warm"]["image"], "v1", "{:#}", status(&site));

    // A rollback inside the window switches nginx back: the service is not updated, its
    // tasks are the same.
    let service = format!("{}-{first}", site.app);
    let running_tasks = || -> BTreeSet<String> {
        swarm
            .tasks(&service)
            .into_iter()
            .filter(|t| t.state == "running" && t.desired == "running")
            .map(|t| t.id)
            .collect()
    };
    let before = running_tasks();
    assert_eq!(before.len(), 3);
    let run = ft(&site, &["rollback", "--yes"]);
    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"), "{}", run.stderr);
    assert_eq!(live_color(&site), first);
    assert_eq!(service_image(&site, first), Some(first_image));
    assert_eq!(running_tasks(), before);
    assert_eq!(upstream_addrs(&site), node_addrs(swarm));
}
