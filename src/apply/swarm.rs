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
    EndpointSpec, NodeState, Service, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, Task, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListServicesOptionsBuilder, ListTasksOptionsBuilder,
    UpdateServiceOptions,
};

use crate::apply::docker::client::{classify, not_found};
use crate::apply::docker::registry::{login_for, pull_error, registry_shown, split_reference};
use crate::config::SwarmConfig;
use crate::model::runtime::{
    ContainerSpec, Endpoints, ImageInfo, LocalImage, Runtime, RuntimeError, LABEL_APP, LABEL_COLOR,
    LABEL_DESIRED, LABEL_GENERATION, LABEL_IMAGE,
};
use crate::model::settings::LABEL_SETTINGS;
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
        let task_template = TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(pinned.clone()),
                labels: Some(spec.labels.clone()),
                env: Some(spec.env.clone()),
                stop_grace_period: Some(nanos(spec.stop_grace)),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(self.cfg.constraints.clone()),
                max_replicas: Some(self.cfg.max_replicas_per_node as i64),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(nanos(Duration::from_secs(1))),
                ..Default::default()
            }),
            force_update: Some(force_update),
            ..Default::default()
        };
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
