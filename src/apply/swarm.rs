//! [`Swarm`]: Docker Swarm runs each color as one service, `{app}-blue` / `{app}-green`,
//! whose tasks publish the color's port in host mode on the nodes that run them.
//!
//! What measurement showed broken on fixed host ports is never used: start-first updates
//! (the new task can never bind the port the old one holds, and the update hangs with no
//! timeout), the routing mesh and ingress publishing (it needs IPVS, absent on many kernels),
//! and Swarm's own rollback (it keeps one previous spec, which fights the desired file).
//! So a color's service is only ever changed while it gets no traffic: scaled to 0 after a
//! drain, and updated (image pinned by digest, replicas) once its old tasks are all gone.
//!
//! Tasks of the spec in force are told from older ones by the spec's `ForceUpdate` counter,
//! which every [`Runtime::run`] raises: no clock of the manager is compared with ours.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, Limit, Mount, MountTmpfsOptions, MountType, NetworkAttachmentConfig,
    NetworkInspect, NodeState, Service, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, Task, TaskSpec, TaskSpecContainerSpec, TaskSpecLogDriver,
    TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListServicesOptionsBuilder, ListTasksOptionsBuilder,
    UpdateServiceOptions,
};

use crate::apply::docker::client::{classify, not_found};
use crate::apply::docker::registry::{login_for, pull_error, registry_shown, split_reference};
use crate::config::swarm_settings;
use crate::config::SwarmConfig;
use crate::model::runtime::{
    ContainerSpec, Endpoints, ImageInfo, LocalImage, Runtime, RuntimeError, LABEL_APP, LABEL_COLOR,
    LABEL_DESIRED, LABEL_GENERATION, LABEL_IMAGE,
};
use crate::model::settings::{MountKind, Settings, LABEL_SETTINGS};
use crate::model::{Instance, InstanceState, Replica};

/// Label holding the digest-pinned image fieldtrack gave the service: a spec image that
/// differs was edited by hand.
const LABEL_PINNED: &str = "fieldtrack.pinned";
/// How long [`Runtime::run`] waits for the old tasks of a color to end, beyond their stop
/// grace period, before it gives up (retried: a node may come back).
const OLD_TASKS_LIMIT: Duration = Duration::from_secs(60);
/// Version conflicts (someone else updated the service meanwhile) retried before giving up.
const UPDATE_TRIES: usize = 5;

/// A Swarm manager's API.
#[derive(Debug, Clone)]
pub struct Swarm {
    client: bollard::Docker,
    host: String,
    cfg: SwarmConfig,
}

/// A node as the placement of tasks needs it.
#[derive(Debug, Clone)]
struct NodeView {
    name: String,
    /// Where its tasks' host-mode ports answer.
    addr: Option<IpAddr>,
    ready: bool,
}

impl Swarm {
    /// Swarm over a connected manager, placing tasks as `cfg` says.
    pub fn new(client: bollard::Docker, host: String, cfg: SwarmConfig) -> Swarm {
        Swarm { client, host, cfg }
    }

    fn classify(&self, action: impl Into<String>, source: bollard::errors::Error) -> RuntimeError {
        classify(&self.host, action, source)
    }

    /// The nodes in a line, for `fieldtrack check`: `3 nodes, 3 ready: n1 (10.0.0.11), ...`.
    /// An error when the engine is not a manager of a swarm.
    pub async fn describe_nodes(&self) -> Result<String, RuntimeError> {
        let nodes = self.nodes().await?;
        let mut names: Vec<String> = nodes
            .values()
            .map(|n| {
                let addr = n.addr.map_or("no address".to_string(), |a| a.to_string());
                let down = if n.ready { "" } else { ", not ready" };
                format!("{} ({addr}{down})", n.name)
            })
            .collect();
        names.sort();
        let ready = nodes.values().filter(|n| n.ready).count();
        Ok(format!(
            "{} nodes, {ready} ready: {}",
            nodes.len(),
            names.join(", ")
        ))
    }

    async fn service(&self, name: &str) -> Result<Option<Service>, RuntimeError> {
        let options = InspectServiceOptions {
            insert_defaults: false,
        };
        match self.client.inspect_service(name, Some(options)).await {
            Ok(service) => Ok(Some(service)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(self.classify(format!("inspect service {name}"), e)),
        }
    }

    async fn tasks(&self, service: &str) -> Result<Vec<Task>, RuntimeError> {
        let filters = HashMap::from([("service", vec![service.to_string()])]);
        let options = ListTasksOptionsBuilder::new().filters(&filters).build();
        self.client
            .list_tasks(Some(options))
            .await
            .map_err(|e| self.classify(format!("list the tasks of {service}"), e))
    }

    async fn nodes(&self) -> Result<HashMap<String, NodeView>, RuntimeError> {
        let nodes = self
            .client
            .list_nodes(None)
            .await
            .map_err(|e| self.classify("list the swarm's nodes", e))?;
        Ok(nodes
            .into_iter()
            .filter_map(|node| {
                let id = node.id?;
                let status = node.status.unwrap_or_default();
                // A manager may report 0.0.0.0 as its address; its manager address is right.
                let addr = status
                    .addr
                    .as_deref()
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .filter(|a| !a.is_unspecified())
                    .or_else(|| {
                        let manager = node.manager_status?.addr?;
                        manager.parse::<SocketAddr>().ok().map(|s| s.ip())
                    });
                let name = node
                    .description
                    .and_then(|d| d.hostname)
                    .unwrap_or_else(|| id.chars().take(12).collect());
                let ready = status.state == Some(NodeState::READY);
                Some((id, NodeView { name, addr, ready }))
            })
            .collect())
    }

    /// Who answers for a service now: the running tasks of its spec in force on nodes that
    /// are ready, each at its node's address and the published port.
    fn running(
        &self,
        service: &Service,
        tasks: &[Task],
        nodes: &HashMap<String, NodeView>,
    ) -> Vec<SocketAddr> {
        let Some(port) = published_port(service) else {
            return Vec::new();
        };
        let mut addrs: Vec<SocketAddr> = tasks
            .iter()
            .filter(|t| current(service, t) && is_running(t))
            .filter_map(|t| nodes.get(t.node_id.as_deref()?))
            .filter(|n| n.ready)
            .filter_map(|n| n.addr)
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// The service's replicas for the status: tasks meant to run, and those of the spec in
    /// force that failed.
    fn replicas(
        service: &Service,
        tasks: &[Task],
        nodes: &HashMap<String, NodeView>,
    ) -> Vec<Replica> {
        let port = published_port(service);
        let mut replicas: Vec<Replica> = tasks
            .iter()
            .filter(|t| {
                // A task on a node that is down still counts as running for the manager,
                // which has told it to stop: shown, marked, so the node's loss is visible.
                let on_down_node = t
                    .node_id
                    .as_deref()
                    .and_then(|id| nodes.get(id))
                    .is_some_and(|n| !n.ready);
                t.desired_state == Some(TaskState::RUNNING)
                    || (on_down_node && !is_terminal(t))
                    || (current(service, t) && failed(t).is_some() && !superseded(t, tasks))
            })
            .map(|t| {
                let node = t.node_id.as_deref().and_then(|id| nodes.get(id));
                let status = t.status.clone().unwrap_or_default();
                let mut state = status
                    .state
                    .map_or("unknown".to_string(), |s| s.to_string());
                if node.is_some_and(|n| !n.ready) {
                    state = format!("{state} (node down)");
                }
                Replica {
                    node: node.map_or("(unassigned)".to_string(), |n| n.name.clone()),
                    address: node
                        .and_then(|n| n.addr)
                        .zip(port)
                        .map(|(ip, port)| SocketAddr::new(ip, port).to_string()),
                    state,
                    message: status.err.filter(|e| !e.is_empty()),
                }
            })
            .collect();
        replicas.sort_by(|a, b| (&a.node, &a.state).cmp(&(&b.node, &b.state)));
        replicas
    }

    /// Waits until no task of `service` may still hold its port on a reachable node: a
    /// retiring task still answers there, and the next one could not bind it.
    async fn wait_old_tasks(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let limit = Instant::now() + grace + OLD_TASKS_LIMIT;
        loop {
            let nodes = self.nodes().await?;
            let tasks = self.tasks(name).await?;
            let holding: Vec<String> = tasks
                .iter()
                .filter(|t| !is_terminal(t))
                .filter(|t| {
                    // A node that is down runs nothing reachable; Swarm stops its tasks when
                    // it comes back.
                    t.node_id
                        .as_deref()
                        .and_then(|id| nodes.get(id))
                        .is_some_and(|n| n.ready)
                })
                .map(|t| describe_task(t, &nodes))
                .collect();
            if holding.is_empty() {
                return Ok(());
            }
            if Instant::now() >= limit {
                return Err(RuntimeError::TasksLinger {
                    service: name.to_string(),
                    tasks: holding.join("; "),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every network of `container.networks` must be one that a service's tasks join on any
    /// node: swarm-scoped (overlay). Only the manager knows, so it is asked here, before
    /// anything is created.
    async fn check_networks(&self, service: &str, networks: &[String]) -> Result<(), RuntimeError> {
        for name in networks {
            let found = match self.client.inspect_network(name, None).await {
                Ok(network) => Some(network),
                Err(e) if not_found(&e) => None,
                Err(e) => return Err(self.classify(format!("inspect network {name}"), e)),
            };
            if let Some(unfit) = unfit_network(service, name, found.as_ref()) {
                return Err(unfit);
            }
        }
        Ok(())
    }

    /// The digest `reference` names in its registry now, asked through the manager.
    async fn digest(&self, reference: &str) -> Result<String, RuntimeError> {
        let login = login_for(reference).await;
        match self
            .client
            .inspect_registry_image(reference, login.credentials())
            .await
        {
            Ok(inspect) => inspect
                .descriptor
                .digest
                .ok_or_else(|| RuntimeError::PullFailed {
                    reference: reference.to_string(),
                    registry: registry_shown(reference),
                    message: "the registry named no digest".to_string(),
                }),
            Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                Err(pull_error(reference, &login, message))
            }
            Err(e) => Err(self.classify(format!("ask the registry about {reference}"), e)),
        }
    }

    /// Changes a service with the version it was read at, again on a version conflict
    /// (someone else changed it meanwhile).
    async fn update(
        &self,
        name: &str,
        change: impl Fn(&mut ServiceSpec),
        credentials: Option<bollard::auth::DockerCredentials>,
    ) -> Result<(), RuntimeError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let Some(service) = self.service(name).await? else {
                return Ok(());
            };
            let version = service
                .version
                .as_ref()
                .and_then(|v| v.index)
                .and_then(|v| i32::try_from(v).ok())
                .unwrap_or_default();
            let mut spec = service.spec.unwrap_or_default();
            change(&mut spec);
            let options = UpdateServiceOptions {
                version,
                ..Default::default()
            };
            match self
                .client
                .update_service(name, spec, options, credentials.clone())
                .await
            {
                Ok(_) => return Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. })
                    if message.contains("out of sequence") && tries < UPDATE_TRIES =>
                {
                    tracing::debug!(service = %name, "version conflict, updating again");
                }
                Err(e) => return Err(self.classify(format!("update service {name}"), e)),
            }
        }
    }
}

impl Runtime for Swarm {
    async fn containers(&self, app: &str) -> Result<Vec<Instance>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_APP}={app}")])]);
        let options = ListServicesOptionsBuilder::new().filters(&filters).build();
        let services = self
            .client
            .list_services(Some(options))
            .await
            .map_err(|e| self.classify(format!("list the services of {app}"), e))?;
        let nodes = self.nodes().await?;
        let mut containers = Vec::with_capacity(services.len());
        for service in services {
            let spec = service.spec.clone().unwrap_or_default();
            let name = spec.name.clone().unwrap_or_default();
            let tasks = self.tasks(&name).await?;
            let wanted = replicas_of(&spec);
            if wanted == 0 && tasks.iter().all(is_terminal) {
                // Scaled to 0 after its drain: kept for the next deployment, runs nothing.
                continue;
            }
            let labels = spec.labels.clone().unwrap_or_default();
            let endpoints = self.running(&service, &tasks, &nodes);
            let state = if !endpoints.is_empty() {
                InstanceState::Running
            } else {
                aggregate_failure(&service, &tasks).unwrap_or(InstanceState::Created)
            };
            let image = spec_image(&spec);
            let drift = if labels.get(LABEL_PINNED) != Some(&image) {
                Some(format!("its image was changed by hand to {image}"))
            } else if wanted != self.cfg.replicas {
                Some(format!(
                    "it is set to {wanted} replicas, and [swarm] replicas = {}",
                    self.cfg.replicas
                ))
            } else {
                None
            };
            containers.push(Instance {
                id: service.id.clone().unwrap_or_default(),
                color: labels.get(LABEL_COLOR).and_then(|c| c.parse().ok()),
                image: labels.get(LABEL_IMAGE).cloned().unwrap_or(image),
                desired: labels.get(LABEL_DESIRED).cloned(),
                generation: labels.get(LABEL_GENERATION).cloned(),
                settings: labels.get(LABEL_SETTINGS).cloned(),
                ports: match (endpoints.is_empty(), published_port(&service)) {
                    (false, Some(port)) => vec![port],
                    _ => Vec::new(),
                },
                replicas: Swarm::replicas(&service, &tasks, &nodes),
                endpoints,
                drift,
                state,
                name,
            });
        }
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(containers)
    }

    /// Swarm has no local image: the registry is asked what the reference names now. None
    /// when it cannot tell; the pull then says why.
    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        match self.digest(reference).await {
            Ok(digest) => {
                let repository = split_reference(reference).0;
                Ok(Some(ImageInfo {
                    id: digest.clone(),
                    repo_digests: vec![format!("{repository}@{digest}")],
                }))
            }
            Err(e) if e.is_transient() => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// The nodes pull when their tasks start; here the registry is only asked whether it
    /// has the image, so that a missing one fails before anything changes.
    async fn pull(&self, reference: &str) -> Result<(), RuntimeError> {
        self.digest(reference).await.map(|_| ())
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let name = &spec.name;
        let existing = self.service(name).await?;
        if let Some(service) = &existing {
            let labels = service
                .spec
                .as_ref()
                .and_then(|s| s.labels.as_ref())
                .cloned()
                .unwrap_or_default();
            if labels.get(LABEL_APP) != spec.labels.get(LABEL_APP) {
                return Err(RuntimeError::NameTaken { name: name.clone() });
            }
        }
        self.check_networks(name, &spec.settings.networks).await?;
        // Every node runs the same bytes: the tag is resolved once, here.
        let pinned = if spec.image.contains('@') {
            spec.image.clone()
        } else {
            format!("{}@{}", spec.image, self.digest(&spec.image).await?)
        };
        let mut labels = spec.labels.clone();
        labels.insert(LABEL_PINNED.to_string(), pinned.clone());
        let force_update = existing
            .as_ref()
            .and_then(|s| s.spec.as_ref()?.task_template.as_ref()?.force_update)
            .unwrap_or(0)
            + 1;
        let task_template = task_template(spec, &pinned, force_update, &self.cfg)?;
        let service_spec = ServiceSpec {
            name: Some(name.clone()),
            labels: Some(labels),
            task_template: Some(task_template),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(self.cfg.replicas as i64),
                }),
                ..Default::default()
            }),
            update_config: Some(ServiceSpecUpdateConfig {
                parallelism: Some(0),
                failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::PAUSE),
                order: Some(ServiceSpecUpdateConfigOrderEnum::STOP_FIRST),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                ports: Some(vec![EndpointPortConfig {
                    protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                    target_port: Some(i64::from(spec.container_port)),
                    published_port: Some(i64::from(spec.host_port)),
                    publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let credentials = login_for(&spec.image).await.credentials();
        match existing {
            None => {
                self.client
                    .create_service(service_spec, credentials)
                    .await
                    .map_err(|e| self.classify(format!("create service {name}"), e))?;
            }
            Some(_) => {
                self.wait_old_tasks(name, spec.stop_grace).await?;
                self.update(name, |s| *s = service_spec.clone(), credentials)
                    .await?;
            }
        }
        Ok(())
    }

    async fn state(&self, name: &str) -> Result<Option<InstanceState>, RuntimeError> {
        let Some(service) = self.service(name).await? else {
            return Ok(None);
        };
        let tasks = self.tasks(name).await?;
        if let Some(failure) = aggregate_failure(&service, &tasks) {
            return Ok(Some(failure));
        }
        let nodes = self.nodes().await?;
        if !self.running(&service, &tasks, &nodes).is_empty() {
            return Ok(Some(InstanceState::Running));
        }
        let wanted = service.spec.as_ref().map_or(0, replicas_of);
        Ok((wanted > 0).then_some(InstanceState::Created))
    }

    async fn endpoints(&self, name: &str, _port: u16) -> Result<Endpoints, RuntimeError> {
        let Some(service) = self.service(name).await? else {
            return Ok(Endpoints::default());
        };
        let tasks = self.tasks(name).await?;
        let nodes = self.nodes().await?;
        Ok(Endpoints {
            addrs: self.running(&service, &tasks, &nodes),
            wanted: service
                .spec
                .as_ref()
                .map_or(0, |s| usize::try_from(replicas_of(s)).unwrap_or(usize::MAX)),
        })
    }

    /// The tasks' own words on why they failed: Swarm keeps no log of a task whose container
    /// never started, and reading a service's logs needs a log driver that every node has.
    async fn logs(&self, name: &str, lines: usize) -> Result<String, RuntimeError> {
        let Some(service) = self.service(name).await? else {
            return Ok(String::new());
        };
        let tasks = self.tasks(name).await?;
        let nodes = self.nodes().await?;
        let mut text: Vec<String> = tasks
            .iter()
            .filter(|t| current(&service, t))
            .map(|t| describe_task(t, &nodes))
            .collect();
        text.truncate(lines);
        Ok(text.join("\n"))
    }

    /// Images live on the nodes; Docker prunes them there.
    async fn images(&self, _repository: &str) -> Result<Vec<LocalImage>, RuntimeError> {
        Ok(Vec::new())
    }

    async fn remove_image(&self, _id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn registry_digest(&self, reference: &str) -> Option<String> {
        self.digest(reference).await.ok()
    }

    /// Scales the color to 0 (its tasks get SIGTERM, then SIGKILL after `grace`); the
    /// service stays, to be updated by the next deployment into this color.
    async fn remove(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.update(
            name,
            |spec| {
                spec.mode = Some(ServiceSpecMode {
                    replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }),
                    ..Default::default()
                });
                if let Some(container) = spec
                    .task_template
                    .as_mut()
                    .and_then(|t| t.container_spec.as_mut())
                {
                    container.stop_grace_period = Some(nanos(grace));
                }
            },
            None,
        )
        .await
    }
}

/// Swarm durations are nanoseconds.
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// A color's task template: the pinned image, the env file, the stop grace, placement and
/// restart policy, and `[container]`'s settings.
///
/// Swarm's names are not Docker's: `ContainerSpec.Command` replaces the image's ENTRYPOINT
/// and `Args` its CMD; a `Hosts` entry is `IP name` (hosts(5)), not `name:IP`. Limits,
/// networks and the log driver belong to the task, not to its container. The container's
/// labels are the operator's, with fieldtrack's own over them; the service's labels stay
/// fieldtrack's alone.
fn task_template(
    spec: &ContainerSpec,
    pinned: &str,
    force_update: u64,
    cfg: &SwarmConfig,
) -> Result<TaskSpec, RuntimeError> {
    let settings = &spec.settings;
    let mut labels: HashMap<String, String> = settings
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend(spec.labels.clone());
    let limits = Limit {
        memory_bytes: settings.memory.map(saturating_i64),
        nano_cpus: settings.nano_cpus.map(saturating_i64),
        ..Default::default()
    };
    Ok(TaskSpec {
        container_spec: Some(TaskSpecContainerSpec {
            image: Some(pinned.to_string()),
            labels: Some(labels),
            command: settings.entrypoint.clone(),
            args: settings.command.clone(),
            env: Some(spec.env.clone()),
            user: settings.user.clone(),
            read_only: settings.read_only.then_some(true),
            mounts: Some(mounts(&spec.name, settings)?).filter(|m| !m.is_empty()),
            stop_signal: settings.stop_signal.clone(),
            stop_grace_period: Some(nanos(spec.stop_grace)),
            hosts: Some(settings.extra_hosts.iter().map(|h| swarm_host(h)).collect())
                .filter(|h: &Vec<String>| !h.is_empty()),
            init: settings.init.then_some(true),
            ..Default::default()
        }),
        resources: (limits != Limit::default()).then(|| TaskSpecResources {
            limits: Some(limits),
            ..Default::default()
        }),
        networks: Some(
            settings
                .networks
                .iter()
                .map(|name| NetworkAttachmentConfig {
                    target: Some(name.clone()),
                    ..Default::default()
                })
                .collect(),
        )
        .filter(|n: &Vec<NetworkAttachmentConfig>| !n.is_empty()),
        log_driver: settings.log_driver.as_ref().map(|name| TaskSpecLogDriver {
            name: Some(name.clone()),
            options: Some(
                settings
                    .log_options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
            .filter(|o: &HashMap<String, String>| !o.is_empty()),
        }),
        placement: Some(TaskSpecPlacement {
            constraints: Some(cfg.constraints.clone()),
            max_replicas: Some(cfg.max_replicas_per_node as i64),
            ..Default::default()
        }),
        restart_policy: Some(TaskSpecRestartPolicy {
            condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
            delay: Some(nanos(Duration::from_secs(1))),
            ..Default::default()
        }),
        force_update: Some(force_update),
        ..Default::default()
    })
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `volumes`, then `tmpfs`, as the service's mounts. The config was checked at load
/// ([`swarm_settings::check`]); a spec built otherwise may still hold a tmpfs entry that
/// Swarm cannot carry.
fn mounts(service: &str, settings: &Settings) -> Result<Vec<Mount>, RuntimeError> {
    let mut mounts: Vec<Mount> = settings
        .volumes
        .iter()
        .map(|v| Mount {
            typ: Some(match v.kind {
                MountKind::Volume => MountType::VOLUME,
                MountKind::Bind => MountType::BIND,
            }),
            source: Some(v.source.clone()),
            target: Some(v.target.clone()),
            read_only: v.read_only.then_some(true),
            ..Default::default()
        })
        .collect();
    for (i, entry) in settings.tmpfs.iter().enumerate() {
        let tmpfs = swarm_settings::tmpfs(entry).map_err(|e| RuntimeError::SettingRefused {
            name: service.to_string(),
            key: format!("container.tmpfs[{i}] ({entry:?})"),
            message: e.to_string(),
        })?;
        mounts.push(Mount {
            typ: Some(MountType::TMPFS),
            target: Some(tmpfs.target),
            tmpfs_options: (tmpfs.size_bytes.is_some() || tmpfs.mode.is_some()).then_some(
                MountTmpfsOptions {
                    size_bytes: tmpfs.size_bytes,
                    mode: tmpfs.mode,
                    ..Default::default()
                },
            ),
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// `name:address` (Compose's `extra_hosts`) as hosts(5) has it, `address name`. The
/// address may hold colons (IPv6): only the first one separates.
fn swarm_host(entry: &str) -> String {
    match entry.split_once(':') {
        Some((name, address)) => format!("{address} {name}"),
        None => entry.to_string(),
    }
}

/// Why `service` cannot join network `name` (None: it can), from what the manager said of
/// it (None: no such network).
fn unfit_network(
    service: &str,
    name: &str,
    found: Option<&NetworkInspect>,
) -> Option<RuntimeError> {
    let setting = |message: String| RuntimeError::SettingRefused {
        name: service.to_string(),
        key: format!("container.networks ({name:?})"),
        message,
    };
    let create = format!(
        "create one on a manager with `docker network create --driver overlay --attachable {name}`"
    );
    let Some(network) = found else {
        return Some(setting(format!(
            "the swarm's manager has no network of that name: {create}"
        )));
    };
    let scope = network.scope.as_deref().unwrap_or("unknown");
    if scope == "swarm" {
        return None;
    }
    let driver = network.driver.as_deref().unwrap_or("unknown");
    Some(setting(format!(
        "its driver is {driver} and its scope {scope}: a Swarm service's tasks join only swarm-scoped networks (driver overlay), which reach every node; {create}"
    )))
}

fn replicas_of(spec: &ServiceSpec) -> u64 {
    spec.mode
        .as_ref()
        .and_then(|m| m.replicated.as_ref())
        .and_then(|r| r.replicas)
        .and_then(|r| u64::try_from(r).ok())
        .unwrap_or(0)
}

fn spec_image(spec: &ServiceSpec) -> String {
    spec.task_template
        .as_ref()
        .and_then(|t| t.container_spec.as_ref())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The host port the service publishes in host mode.
fn published_port(service: &Service) -> Option<u16> {
    service
        .spec
        .as_ref()?
        .endpoint_spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST))
        .and_then(|p| p.published_port)
        .and_then(|p| u16::try_from(p).ok())
}

/// Whether a task belongs to the service's spec in force (see the module docs).
fn current(service: &Service, task: &Task) -> bool {
    let template = service.spec.as_ref().and_then(|s| s.task_template.as_ref());
    let of_task = task.spec.as_ref();
    template.and_then(|t| t.force_update) == of_task.and_then(|t| t.force_update)
        && template.and_then(|t| t.container_spec.as_ref()?.image.clone())
            == of_task.and_then(|t| t.container_spec.as_ref()?.image.clone())
}

fn state_of(task: &Task) -> Option<TaskState> {
    task.status.as_ref().and_then(|s| s.state)
}

fn is_running(task: &Task) -> bool {
    task.desired_state == Some(TaskState::RUNNING) && state_of(task) == Some(TaskState::RUNNING)
}

fn is_terminal(task: &Task) -> bool {
    matches!(
        state_of(task),
        Some(
            TaskState::COMPLETE
                | TaskState::SHUTDOWN
                | TaskState::FAILED
                | TaskState::REJECTED
                | TaskState::REMOVE
                | TaskState::ORPHANED
        ) | None
    )
}

/// How a task failed: its container exited (with its code) or Swarm rejected it (an image
/// the node could not pull).
///
/// A task that could not bind its host port has not failed for fieldtrack: the node's
/// engine releases the port of the color's last task a moment after that task ended, and
/// Swarm starts the task again after its restart delay. The health gate waits for it; a port
/// held for good ends in the gate's deadline, whose error quotes this very task.
fn failed(task: &Task) -> Option<InstanceState> {
    let status = task.status.as_ref()?;
    if port_held(status.err.as_deref().unwrap_or_default()) {
        return None;
    }
    match status.state? {
        TaskState::FAILED => Some(InstanceState::Exited {
            code: status
                .container_status
                .as_ref()
                .and_then(|c| c.exit_code)
                .unwrap_or(-1),
        }),
        TaskState::REJECTED => Some(InstanceState::Other(format!(
            "rejected: {}",
            status.err.as_deref().unwrap_or("no reason given")
        ))),
        _ => None,
    }
}

/// Whether a task's error says its host port was held by something else on its node.
fn port_held(err: &str) -> bool {
    err.contains("port is already allocated") || err.contains("address already in use")
}

/// Whether a newer task took a failed task's slot and runs.
fn superseded(task: &Task, tasks: &[Task]) -> bool {
    tasks
        .iter()
        .any(|t| t.slot.is_some() && t.slot == task.slot && is_running(t))
}

/// The first failure of a task of the spec in force whose slot runs nothing else, if any:
/// a candidate whose task crashed fails at once, even though Swarm would start it again.
/// A failed task whose slot runs a newer one is history Swarm keeps (a replica killed once
/// and restarted), no failure of the color.
fn aggregate_failure(service: &Service, tasks: &[Task]) -> Option<InstanceState> {
    tasks
        .iter()
        .filter(|t| current(service, t) && !superseded(t, tasks))
        .find_map(failed)
}

fn describe_task(task: &Task, nodes: &HashMap<String, NodeView>) -> String {
    let node = task
        .node_id
        .as_deref()
        .and_then(|id| nodes.get(id))
        .map_or("no node yet", |n| n.name.as_str());
    let status = task.status.clone().unwrap_or_default();
    let state = status
        .state
        .map_or("unknown".to_string(), |s| s.to_string());
    let slot = task.slot.map_or(String::new(), |s| format!(" {s}"));
    let mut line = format!("task{slot} on {node}: {state}");
    if let Some(code) = status.container_status.and_then(|c| c.exit_code) {
        if code != 0 {
            line.push_str(&format!(" (exit code {code})"));
        }
    }
    for words in [status.err, status.message].into_iter().flatten() {
        if !words.is_empty() {
            line.push_str(&format!(": {words}"));
            break;
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use bollard::models::{ContainerStatus, TaskStatus};

    use super::*;

    const IMAGE: &str = "10.231.0.1:5000/app@sha256:aaaa";

    fn template(force_update: u64) -> TaskSpec {
        TaskSpec {
            force_update: Some(force_update),
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(IMAGE.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn service() -> Service {
        Service {
            spec: Some(ServiceSpec {
                task_template: Some(template(3)),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A task of the spec in force in `slot`, in `state`, that the orchestrator wants in
    /// `desired`; `exit` its container's exit code.
    fn task(slot: i64, state: TaskState, desired: TaskState, exit: Option<i64>) -> Task {
        Task {
            slot: Some(slot),
            desired_state: Some(desired),
            spec: Some(template(3)),
            status: Some(TaskStatus {
                state: Some(state),
                container_status: Some(ContainerStatus {
                    exit_code: exit,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container_spec(settings: Settings) -> ContainerSpec {
        ContainerSpec {
            name: "api-green".into(),
            image: "10.231.0.1:5000/app:v1".into(),
            labels: HashMap::from([
                (LABEL_APP.to_string(), "api".to_string()),
                (LABEL_SETTINGS.to_string(), settings.to_label()),
            ]),
            host_port: 3002,
            container_port: 8080,
            env: vec!["A=1".into()],
            stop_grace: Duration::from_secs(10),
            settings,
        }
    }

    fn template_of(settings: Settings) -> TaskSpec {
        task_template(&container_spec(settings), IMAGE, 4, &SwarmConfig::default())
            .expect("a template")
    }

    /// Without settings the template is what fieldtrack gave every service before them:
    /// nothing set that the engine would otherwise default.
    #[test]
    fn no_settings_leave_the_template_as_it_was() {
        let task = template_of(Settings::default());
        let container = task.container_spec.clone().expect("a container spec");
        assert_eq!(container.image.as_deref(), Some(IMAGE));
        assert_eq!(container.env, Some(vec!["A=1".to_string()]));
        assert_eq!(container.stop_grace_period, Some(10_000_000_000));
        assert_eq!(
            (container.command, container.args, container.user),
            (None, None, None)
        );
        assert_eq!(
            (container.mounts, container.hosts, container.init),
            (None, None, None)
        );
        assert_eq!((container.read_only, container.stop_signal), (None, None));
        assert_eq!(
            (task.resources, task.networks, task.log_driver),
            (None, None, None)
        );
        assert_eq!(task.force_update, Some(4));
    }

    #[test]
    fn every_setting_lands_where_swarm_reads_it() {
        let settings = Settings {
            command: Some(vec!["bin/rails".into(), "server".into()]),
            entrypoint: Some(vec!["/docker-entrypoint".into()]),
            networks: vec!["backend".into(), "cache".into()],
            volumes: vec![
                crate::model::settings::Mount {
                    kind: MountKind::Volume,
                    source: "uploads".into(),
                    target: "/app/uploads".into(),
                    read_only: false,
                },
                crate::model::settings::Mount {
                    kind: MountKind::Bind,
                    source: "/srv/api/sock".into(),
                    target: "/run/api".into(),
                    read_only: true,
                },
            ],
            memory: Some(64 << 20),
            nano_cpus: Some(1_500_000_000),
            extra_hosts: vec![
                "host.docker.internal:host-gateway".into(),
                "db6:fd00::2".into(),
            ],
            labels: std::collections::BTreeMap::from([
                ("team".into(), "api".into()),
                (LABEL_APP.into(), "not this".into()),
            ]),
            user: Some("1000:1000".into()),
            log_driver: Some("json-file".into()),
            log_options: std::collections::BTreeMap::from([("max-size".into(), "10m".into())]),
            stop_signal: Some("SIGQUIT".into()),
            init: true,
            read_only: true,
            tmpfs: vec!["/tmp".into(), "/run:size=64m,mode=1777".into()],
            ..Settings::default()
        };
        let task = template_of(settings);
        let container = task.container_spec.clone().expect("a container spec");
        // Swarm's Command is Docker's entrypoint, its Args the command.
        assert_eq!(
            container.command,
            Some(vec!["/docker-entrypoint".to_string()])
        );
        assert_eq!(
            container.args,
            Some(vec!["bin/rails".to_string(), "server".to_string()])
        );
        assert_eq!(
            container.hosts,
            Some(vec![
                "host-gateway host.docker.internal".to_string(),
                "fd00::2 db6".to_string()
            ])
        );
        let labels = container.labels.clone().expect("labels");
        assert_eq!(labels.get("team").map(String::as_str), Some("api"));
        assert_eq!(
            labels.get(LABEL_APP).map(String::as_str),
            Some("api"),
            "fieldtrack's own labels win"
        );
        assert_eq!(container.user.as_deref(), Some("1000:1000"));
        assert_eq!(container.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(
            (container.init, container.read_only),
            (Some(true), Some(true))
        );
        assert_eq!(
            container.mounts,
            Some(vec![
                Mount {
                    typ: Some(MountType::VOLUME),
                    source: Some("uploads".into()),
                    target: Some("/app/uploads".into()),
                    ..Default::default()
                },
                Mount {
                    typ: Some(MountType::BIND),
                    source: Some("/srv/api/sock".into()),
                    target: Some("/run/api".into()),
                    read_only: Some(true),
                    ..Default::default()
                },
                Mount {
                    typ: Some(MountType::TMPFS),
                    target: Some("/tmp".into()),
                    ..Default::default()
                },
                Mount {
                    typ: Some(MountType::TMPFS),
                    target: Some("/run".into()),
                    tmpfs_options: Some(MountTmpfsOptions {
                        size_bytes: Some(64 << 20),
                        mode: Some(0o1777),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ])
        );
        let limits = task.resources.and_then(|r| r.limits).expect("limits");
        assert_eq!(limits.memory_bytes, Some(64 << 20));
        assert_eq!(limits.nano_cpus, Some(1_500_000_000));
        let networks: Vec<Option<String>> = task
            .networks
            .expect("networks")
            .into_iter()
            .map(|n| n.target)
            .collect();
        assert_eq!(
            networks,
            vec![Some("backend".to_string()), Some("cache".to_string())]
        );
        let log = task.log_driver.expect("a log driver");
        assert_eq!(log.name.as_deref(), Some("json-file"));
        assert_eq!(
            log.options,
            Some(HashMap::from([("max-size".to_string(), "10m".to_string())]))
        );
    }

    #[test]
    fn a_tmpfs_entry_swarm_cannot_carry_is_an_error_naming_it() {
        let spec = container_spec(Settings {
            tmpfs: vec!["/tmp".into(), "/run:noexec".into()],
            ..Settings::default()
        });
        let error = task_template(&spec, IMAGE, 1, &SwarmConfig::default())
            .expect_err("refused")
            .to_string();
        assert!(
            error.contains(
                "container.tmpfs[1] (\"/run:noexec\") for container api-green: option \"noexec\""
            ),
            "{error}"
        );
    }

    fn network(driver: &str, scope: &str) -> NetworkInspect {
        NetworkInspect {
            name: Some("backend".into()),
            driver: Some(driver.into()),
            scope: Some(scope.into()),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_swarm_scoped_network_is_fit_for_a_service() {
        assert!(
            unfit_network("api-green", "backend", Some(&network("overlay", "swarm"))).is_none()
        );
        let local = unfit_network("api-green", "backend", Some(&network("bridge", "local")))
            .expect("a local network is unfit")
            .to_string();
        assert!(
            local.contains(
                "container.networks (\"backend\") for container api-green: its driver is bridge and its scope local:"
            ),
            "{local}"
        );
        let missing = unfit_network("api-green", "backend", None)
            .expect("a missing network is unfit")
            .to_string();
        assert!(
            missing.contains("no network of that name")
                && missing.contains("docker network create --driver overlay --attachable backend"),
            "{missing}"
        );
    }

    /// A replica that was killed (137) and that Swarm restarted stays in the task history:
    /// it is no failure of the color, whose every slot runs.
    #[test]
    fn a_failed_task_swarm_replaced_is_no_failure_of_the_color() {
        let tasks = [
            task(1, TaskState::FAILED, TaskState::SHUTDOWN, Some(137)),
            task(1, TaskState::RUNNING, TaskState::RUNNING, None),
            task(2, TaskState::RUNNING, TaskState::RUNNING, None),
            task(3, TaskState::RUNNING, TaskState::RUNNING, None),
        ];
        assert_eq!(aggregate_failure(&service(), &tasks), None);
    }

    /// A candidate whose task crashed fails at once, while Swarm's replacement for that slot
    /// waits out its restart delay (or starts): nothing of that slot runs.
    #[test]
    fn a_failed_task_whose_slot_runs_nothing_is_the_colors_failure() {
        for replacement in [TaskState::NEW, TaskState::PENDING, TaskState::STARTING] {
            let tasks = [
                task(1, TaskState::FAILED, TaskState::SHUTDOWN, Some(3)),
                task(1, replacement, TaskState::RUNNING, None),
                task(2, TaskState::RUNNING, TaskState::RUNNING, None),
            ];
            assert_eq!(
                aggregate_failure(&service(), &tasks),
                Some(InstanceState::Exited { code: 3 }),
                "{replacement:?}"
            );
        }
        let alone = [task(1, TaskState::FAILED, TaskState::RUNNING, Some(3))];
        assert_eq!(
            aggregate_failure(&service(), &alone),
            Some(InstanceState::Exited { code: 3 })
        );
    }
}
