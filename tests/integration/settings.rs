//! `[container]` settings on the real engine: an app on a user network reaching its
//! database container by name, a named volume whose content outlives a deploy and a
//! rollback, limits and options read back with `docker inspect`, a change of a setting
//! redeployed blue/green under load with no failed request, and a host mount refused at
//! load. The test app (testbed/app) makes any tag need what a real app needs, from its env
//! file: `NEEDS` (a TCP address its health needs) and `DATA_FILE` (state on a volume).

use std::fs;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::canary::Load;
use crate::common::*;
use fieldtrack_testbed::Site;

/// What a test made on the engine beside the site (a network, a volume, a database
/// container), removed when the test ends, failed or not. The site's own containers are
/// removed first here: a network or volume in use cannot go.
struct Extras {
    /// `DOCKER_HOST` of the bed's engine, as [`Site::docker`] sets it.
    docker_host: std::ffi::OsString,
    app: String,
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
}

impl Extras {
    fn new(site: &Site) -> Extras {
        let docker = site.docker();
        let docker_host = docker
            .get_envs()
            .find_map(|(key, value)| (key == "DOCKER_HOST").then_some(value).flatten())
            .expect("Site::docker sets DOCKER_HOST")
            .to_os_string();
        Extras {
            docker_host,
            app: site.app.clone(),
            containers: Vec::new(),
            networks: Vec::new(),
            volumes: Vec::new(),
        }
    }

    fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.docker_host);
        cmd
    }

    /// A user-defined bridge network of this test alone.
    fn network(&mut self, site: &Site) -> String {
        let name = format!("{}-net", site.app);
        docker_ok(self.docker().args(["network", "create", &name]));
        self.networks.push(name.clone());
        name
    }

    /// The test app (`tag`) running as `{app}-db` on `network`, reached there as `db`.
    fn database(&mut self, site: &Site, network: &str, tag: &str) -> String {
        let name = format!("{}-db", site.app);
        docker_ok(self.docker().args([
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            network,
            "--network-alias",
            "db",
            &site.image(tag),
        ]));
        self.containers.push(name.clone());
        name
    }

    /// A named volume the test will mount; removed at the end.
    fn volume(&mut self, site: &Site) -> String {
        let name = format!("{}-data", site.app);
        self.volumes.push(name.clone());
        name
    }
}

impl Drop for Extras {
    fn drop(&mut self) {
        let ours = self
            .docker()
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=fieldtrack.app={}", self.app),
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut containers: Vec<String> = ours.lines().map(str::to_string).collect();
        containers.extend(self.containers.iter().cloned());
        if !containers.is_empty() {
            let _ = self.docker().args(["rm", "-f"]).args(&containers).output();
        }
        for network in &self.networks {
            let _ = self.docker().args(["network", "rm", network]).output();
        }
        for volume in &self.volumes {
            let _ = self.docker().args(["volume", "rm", "-f", volume]).output();
        }
    }
}

#[track_caller]
fn docker_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("docker runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker inspect` of a container, as JSON.
fn inspect(site: &Site, name: &str) -> serde_json::Value {
    let text = docker_ok(
        site.docker()
            .args(["inspect", "--format", "{{json .}}", name]),
    );
    serde_json::from_str(&text).expect("docker inspect gives JSON")
}

/// The site's env file (the config's default `.env`, beside it).
fn env_file(site: &Site, lines: &[&str]) {
    write_new(&site.dir.join(".env"), lines.join("\n") + "\n");
}

/// What nginx answers on `path`: (status, body).
fn get(site: &Site, path: &str) -> (u16, String) {
    site.get(path)
        .unwrap_or_else(|e| panic!("GET {path} through nginx: {e}"))
}

#[test]
fn an_app_on_a_user_network_reaches_its_database_by_name_and_fails_its_gate_without_it() {
    let mut site = Site::new();
    fast_health(&mut site);
    let mut extras = Extras::new(&site);
    let network = extras.network(&site);
    extras.database(&site, &network, "v1");
    env_file(&site, &["NEEDS=db:8080"]);
    site.set("container.networks", &toml_array(&[&network]));

    deploy_ok(&site, "v1");
    let live = container_name(&site, live_color(&site));
    let networks = &inspect(&site, &live)["NetworkSettings"]["Networks"];
    assert!(networks.get(&network).is_some(), "{networks:#}");
    assert_eq!(
        networks.as_object().map(|n| n.len()),
        Some(1),
        "{networks:#}"
    );
    // On a user network too, the port is published on loopback alone.
    let ports = &inspect(&site, &live)["NetworkSettings"]["Ports"]["8080/tcp"];
    assert_eq!(ports[0]["HostIp"], "127.0.0.1", "{ports:#}");

    // Without the network the app cannot resolve `db`: its gate fails, production stays.
    site.set("container.networks", "[]");
    let before = Production::of(&site);
    let run = ft(&site, &["deploy", "v2"]);
    run.expect_code(1);
    // The gate failed on the app's own 503 (it cannot reach db:8080).
    assert!(run.stderr.contains("HTTP 503"), "{}", run.stderr);
    before.assert_same(&site);

    // A network that does not exist: the error names it and the key, nothing is left.
    let missing = format!("{}-missing", site.app);
    site.set("container.networks", &toml_array(&[&missing]));
    let run = ft(&site, &["deploy", "v2"]);
    run.expect_code(1);
    run.says(&["container.networks", &missing]);
    before.assert_same(&site);

    // Two networks: the second is joined before the start.
    let second = extras.network_named(&site, "back");
    site.set("container.networks", &toml_array(&[&network, &second]));
    deploy_ok(&site, "v2");
    let live = container_name(&site, live_color(&site));
    let networks = &inspect(&site, &live)["NetworkSettings"]["Networks"];
    assert!(
        networks.get(&network).is_some() && networks.get(&second).is_some(),
        "{networks:#}"
    );
}

impl Extras {
    /// A further user network, `{app}-{suffix}`.
    fn network_named(&mut self, site: &Site, suffix: &str) -> String {
        let name = format!("{}-{suffix}", site.app);
        docker_ok(self.docker().args(["network", "create", &name]));
        self.networks.push(name.clone());
        name
    }
}

#[test]
fn a_named_volume_keeps_its_content_through_a_deploy_and_a_rollback() {
    let mut site = Site::new();
    fast_health(&mut site);
    let mut extras = Extras::new(&site);
    let volume = extras.volume(&site);
    env_file(&site, &["DATA_FILE=/data/visits"]);
    site.set(
        "container.volumes",
        &toml_array(&[&format!("{volume}:/data")]),
    );

    deploy_ok(&site, "v1");
    assert_eq!(get(&site, "/data/append"), (200, "v1\n".to_string()));

    deploy_ok(&site, "v2");
    assert_eq!(get(&site, "/data"), (200, "v1\n".to_string()));
    assert_eq!(get(&site, "/data/append"), (200, "v1\nv2\n".to_string()));

    ft(&site, &["rollback", "--yes"]).expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(get(&site, "/data"), (200, "v1\nv2\n".to_string()));
    let live = container_name(&site, live_color(&site));
    let mounts = &inspect(&site, &live)["Mounts"];
    assert_eq!(mounts[0]["Type"], "volume", "{mounts:#}");
    assert_eq!(mounts[0]["Name"], volume.as_str(), "{mounts:#}");
    assert_eq!(mounts[0]["Destination"], "/data", "{mounts:#}");
}

#[test]
fn limits_and_options_reach_the_engine_as_configured() {
    let mut site = Site::new();
    fast_health(&mut site);
    let _extras = Extras::new(&site);
    for (key, value) in [
        // The image's entrypoint is /testapp: cleared, and named as the command instead.
        ("container.entrypoint", "[]"),
        ("container.command", "[\"/testapp\"]"),
        ("container.memory", "\"64m\""),
        ("container.cpus", "0.5"),
        ("container.labels", "{ team = \"api\", tier = \"web\" }"),
        ("container.user", "\"1000:1000\""),
        ("container.init", "true"),
        ("container.read_only", "true"),
        ("container.tmpfs", "[\"/tmp:size=8m\"]"),
        ("container.stop_signal", "\"SIGINT\""),
        (
            "container.extra_hosts",
            "[\"host.docker.internal:host-gateway\", \"db.internal:10.9.8.7\"]",
        ),
        ("container.log_driver", "\"json-file\""),
        (
            "container.log_options",
            "{ max-size = \"1m\", max-file = \"2\" }",
        ),
    ] {
        site.set(key, value);
    }

    deploy_ok(&site, "v1");

    let live = container_name(&site, live_color(&site));
    let c = inspect(&site, &live);
    let host = &c["HostConfig"];
    assert_eq!(host["Memory"], 64 << 20, "{host:#}");
    assert_eq!(host["NanoCpus"], 500_000_000, "{host:#}");
    assert_eq!(host["Init"], true, "{host:#}");
    assert_eq!(host["ReadonlyRootfs"], true, "{host:#}");
    assert_eq!(host["Tmpfs"]["/tmp"], "size=8m", "{host:#}");
    let extra_hosts = host["ExtraHosts"].to_string();
    assert!(
        extra_hosts.contains("host.docker.internal:host-gateway")
            && extra_hosts.contains("db.internal:10.9.8.7"),
        "{extra_hosts}"
    );
    assert_eq!(host["LogConfig"]["Type"], "json-file", "{host:#}");
    assert_eq!(host["LogConfig"]["Config"]["max-size"], "1m", "{host:#}");
    let config = &c["Config"];
    assert_eq!(config["User"], "1000:1000", "{config:#}");
    assert!(
        config["Entrypoint"].is_null() || config["Entrypoint"] == serde_json::json!([]),
        "{config:#}"
    );
    assert_eq!(config["Cmd"], serde_json::json!(["/testapp"]), "{config:#}");
    assert_eq!(config["StopSignal"], "SIGINT", "{config:#}");
    assert_eq!(config["Labels"]["team"], "api", "{config:#}");
    assert_eq!(config["Labels"]["fieldtrack.app"], site.app.as_str());
    // What the container runs with is in its label, read back by the next pass: in sync.
    let plan = ft(&site, &["plan"]);
    plan.expect_code(0);
    assert!(plan.stdout.contains("In sync"), "{}", plan.stdout);
}

#[test]
fn a_changed_setting_redeploys_the_same_image_blue_green_with_no_failed_request() {
    let mut site = Site::new();
    fast_health(&mut site);
    let _extras = Extras::new(&site);
    deploy_ok(&site, "v1");
    let old = container_name(&site, live_color(&site));
    let new = container_name(&site, idle_color(&site));
    // An upgrade of fieldtrack alone (containers without the label, no settings) is no drift.
    let plan = ft(&site, &["plan"]);
    plan.expect_code(0);

    let load = Load::start(&site, "/version", 4, Duration::from_millis(5));
    thread::sleep(Duration::from_millis(500));
    site.set("container.memory", "\"64m\"");
    let changed = Instant::now();
    let plan = ft(&site, &["plan"]);
    plan.expect_code(3);
    assert!(
        plan.stdout
            .contains("its settings differ from the config: container.memory: (unset) -> 67108864"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .contains(&format!("deploy v1 as {}", color_of(&new))),
        "{}",
        plan.stdout
    );
    let upstream_before = upstream_port(&site);
    let reconcile = {
        let mut cmd = command(&site, &["reconcile"]);
        thread::spawn(move || Run::of(&mut cmd))
    };
    let switched = wait_for(
        Duration::from_secs(120),
        "the switch to the new color",
        || {
            fs::read_to_string(&site.upstream_file)
                .ok()
                .filter(|text| !text.contains(&format!("127.0.0.1:{upstream_before};")))
                .map(|_| Instant::now())
        },
    );
    let run = reconcile.join().expect("reconcile runs");
    thread::sleep(Duration::from_millis(500));
    let answers = load.stop();

    run.expect_code(0);
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| a.status != 200 || a.body != "v1")
        .collect();
    eprintln!(
        "settings change redeploy: {} requests, {} failed, {:?} from the config change to the switch, {:?} for the whole reconcile",
        answers.len(),
        failed.len(),
        switched - changed,
        run.duration
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(answers.len() > 100, "only {} requests", answers.len());
    assert_eq!(site.containers(), vec![new.clone()], "{old} was retired");
    assert_eq!(inspect(&site, &new)["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(history(&site), "v1\n");
    assert_converged(&site, "v1");
    let plan = ft(&site, &["plan"]);
    plan.expect_code(0);
}

#[test]
fn a_bind_mount_of_the_docker_socket_is_refused_at_load_naming_the_key() {
    let mut site = Site::new();
    site.set(
        "container.volumes",
        &toml_array(&["data:/data", "/var/run/docker.sock:/var/run/docker.sock"]),
    );
    let before = Production::of(&site);

    let run = ft(&site, &["deploy", "v1"]);

    run.expect_code(2);
    run.says(&[
        "container.volumes[1]",
        "/var/run/docker.sock",
        "set container.allow_host_mounts = true if you mean it",
    ]);
    before.assert_same(&site);
    assert!(site.containers().is_empty());
}
