//! In-process fakes of the three external systems ([`Runtime`], [`Proxy`], [`Prober`]), so
//! the attempt's state machine (health gate, switch, drain, switch-back, cancellation) is
//! tested in milliseconds without a Docker engine or an nginx. They never replace the
//! real-engine tests; they make the decision logic cheap to test.
//!
//! The three fakes share one [`World`] (like controller-rs's `fixtures.rs` fakes one API
//! server): the containers, the images known locally, the upstream file's text, the config
//! nginx runs, and a log of the calls made. A test sets the world up, scripts its knobs
//! (a candidate that exits, probes per port, `nginx -t` or a reload failing, a removal or a
//! pull failing), runs a pass, then reads the world back.
//!
//! For the simulation (`simulation.rs`) the world also plays a process that dies: armed with
//! [`World::kill_after`], it kills the process at its K-th call (a call whose effect is done,
//! and whose answer never comes back), and keeps the bookkeeping the simulation's invariants
//! read: the images nginx sent traffic to, the ports its old workers may still use, and the
//! [`World::violations`] seen as they happened (a removal of a container nginx may send
//! traffic to, a reload pointing nginx at a container that never answered healthy).
//!
//! The fake proxy keeps the [`Proxy::switch`] contract of the real `Nginx`: a failed test
//! puts the previous bytes back exactly (or removes the file when there was none) and never
//! reloads; a failed reload restores and reloads again, and when that fails too, or the
//! restore does, the error says nginx is unsettled.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::model::probe::{ProbeOutcome, Prober};
use crate::model::proxy::{Proxy, ProxyError};
use crate::model::runtime::{
    ContainerSpec, Endpoints, ImageInfo, LocalImage, Runtime, RuntimeError, LABEL_COLOR,
    LABEL_DESIRED, LABEL_GENERATION, LABEL_IMAGE,
};
use crate::model::settings::LABEL_SETTINGS;
use crate::model::{Instance, InstanceState};
use crate::nginx_conf::upstream::{
    parse_ports, parse_servers, parse_weighted, preview_name, render, render_preview,
    render_servers, render_weighted,
};

/// One call the reconciler made to the outside world, in the order made. State checks,
/// listings and reads are not logged: they change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `pull(reference)`.
    Pull(String),
    /// `run(spec)`, by container name.
    Run(String),
    /// `remove(name)`, whether it succeeded or not.
    Remove(String),
    /// `remove_image(name)`.
    RemoveImage(String),
    /// The upstream file written to point at this port (the start of a switch).
    Write(u16),
    /// `test_command` run on the file as written.
    Test,
    /// `reload_command` run.
    Reload,
    /// The previous upstream file put back after a failed test or reload.
    Restore,
    /// `wait_retired`: the drain waited for nginx's old workers.
    WaitRetired,
    /// One probe of this port.
    Probe(u16),
}

/// How a scripted pull fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// The registry does not answer: worth retrying.
    Transient,
    /// The registry has no such image: wait for a new desired state.
    Permanent,
}

/// One container of the fake engine.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeContainer {
    pub id: String,
    pub name: String,
    pub labels: HashMap<String, String>,
    pub state: InstanceState,
    /// Host ports it publishes; like the engine, listed only while it runs.
    pub ports: Vec<u16>,
    /// What `logs` returns.
    pub logs: String,
    /// Once the port's own script and answer (see [`World::script`]) say nothing, probes of
    /// its port answer these, in order...
    pub probes: VecDeque<ProbeOutcome>,
    /// ...then this; None: 200.
    pub answer: Option<ProbeOutcome>,
    /// It has answered a probe healthy since it started (it passed, or could pass, a gate).
    pub answered_healthy: bool,
}

impl FakeContainer {
    /// The container as the runtime reports it, from its labels (as `Docker` reads them).
    fn observed(&self) -> Instance {
        Instance {
            id: self.id.clone(),
            name: self.name.clone(),
            color: self.labels.get(LABEL_COLOR).and_then(|c| c.parse().ok()),
            image: self.labels.get(LABEL_IMAGE).cloned().unwrap_or_default(),
            desired: self.labels.get(LABEL_DESIRED).cloned(),
            generation: self.labels.get(LABEL_GENERATION).cloned(),
            settings: self.labels.get(LABEL_SETTINGS).cloned(),
            state: self.state.clone(),
            ports: if self.state.is_running() {
                self.ports.clone()
            } else {
                Vec::new()
            },
            endpoints: if self.state.is_running() {
                self.ports
                    .iter()
                    .map(|p| Endpoints::loopback(*p).addrs[0])
                    .collect()
            } else {
                Vec::new()
            },
            drift: None,
            replicas: Vec::new(),
        }
    }
}

/// A scripted crash: the container keeps running for `checks` more state checks, then the
/// next one finds it exited with `code`, having printed `logs`.
#[derive(Debug, Clone)]
struct Crash {
    checks: u32,
    code: i64,
    logs: String,
}

/// How the containers of an image behave (see [`World::behave`]): how their probes answer, and
/// whether they exit by themselves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    /// The first probes answer these, in order.
    pub probes: Vec<ProbeOutcome>,
    /// Then every probe answers this.
    pub answer: ProbeOutcome,
    /// The container exits (code 1) after this many state checks.
    pub crash_after: Option<u32>,
}

/// Something a test makes happen in the world at a given probe (an operator's edit, a
/// cancellation): run inside the prober, before that probe is answered.
type Event = Box<dyn FnOnce(&mut World) + Send>;

/// What the fakes share: the world outside fieldtrack, and the knobs a test scripts.
pub struct World {
    /// The app's containers (the engine's labels say which app; the fakes hold one).
    pub containers: Vec<FakeContainer>,
    /// References of the images present locally.
    pub images: Vec<String>,
    /// The upstream file's text; None when there is no file.
    pub upstream: Option<String>,
    /// The config nginx runs: the upstream file as it was at the last successful reload.
    pub loaded: Option<String>,
    /// The calls made, in order (see [`Call`]).
    pub calls: Vec<Call>,
    /// The name of the upstream block, for rendering and parsing the file.
    pub upstream_name: String,
    /// Where the real file would be, for error messages.
    pub upstream_path: PathBuf,
    /// Every file written holds the `_preview` block too (`rollout.promotion = "manual"`).
    pub preview: bool,

    /// The next pull fails so.
    pub pull_failure: Option<PullFailure>,
    /// Containers whose removal fails (the engine refuses).
    pub remove_fails: Vec<String>,
    /// How many of the next `nginx -t` runs fail.
    pub test_failures: u32,
    /// How many of the next reloads fail (2: the reload after the restore fails too).
    pub reload_failures: u32,
    /// Putting the previous upstream file back fails.
    pub restore_fails: bool,
    /// Reading the upstream file fails.
    pub read_fails: bool,
    /// How many of the next engine calls fail as if the engine did not answer (transient).
    pub engine_errors: u32,

    /// Every image (its `fieldtrack.desired` label) nginx's loaded config sent traffic to.
    pub served: Vec<String>,
    /// Ports nginx's loaded config pointed at before its last reloads: its old workers may
    /// still send them requests until [`Proxy::wait_retired`] is called.
    pub unretired: Vec<u16>,
    /// Invariants broken as it happened, in words (see the module's header).
    pub violations: Vec<String>,
    /// The process is dead (see [`World::kill_after`]): its calls never return.
    pub dead: bool,
    /// A switch counts as one call for [`World::kill_after`]: the process dies before or
    /// after it, never between writing the upstream file and nginx's reload.
    pub whole_switch: bool,
    /// Counted calls left before the process dies, and who to tell.
    kill: Option<(u32, Arc<Notify>)>,
    /// The process dies right after its next write of the upstream file, and who to tell.
    kill_at_write: Option<Arc<Notify>>,
    /// When the pass was cancelled (see [`World::cancelled`]) and the ports nginx's loaded
    /// config named then.
    cancelled_at: Option<(Instant, Vec<u16>)>,
    /// The ports nginx's loaded config named when the process started.
    started_on: Vec<u16>,
    behaviours: HashMap<String, Behaviour>,

    crashes: HashMap<String, Crash>,
    /// Per port: outcomes answered in order, before `answers` applies.
    scripts: HashMap<u16, VecDeque<ProbeOutcome>>,
    /// Per port: the outcome once the script is used up. Without one, a port a running
    /// container publishes answers 200.
    answers: HashMap<u16, ProbeOutcome>,
    probes: u32,
    events: Vec<(u32, Event)>,
    next_id: u32,
}

/// How long after a cancellation a switch already under way may still reach nginx: the
/// attempt checks for a cancel, then switches, and a cancel arriving in between is honoured
/// by the next pass. The point no switch may pass is the check; this covers the gap.
pub const CANCEL_GRACE: Duration = Duration::from_millis(20);

impl World {
    fn new(upstream_name: &str, upstream_path: PathBuf) -> World {
        World {
            containers: Vec::new(),
            images: Vec::new(),
            upstream: None,
            loaded: None,
            calls: Vec::new(),
            upstream_name: upstream_name.to_string(),
            upstream_path,
            preview: false,
            pull_failure: None,
            remove_fails: Vec::new(),
            test_failures: 0,
            reload_failures: 0,
            restore_fails: false,
            read_fails: false,
            engine_errors: 0,
            served: Vec::new(),
            unretired: Vec::new(),
            violations: Vec::new(),
            dead: false,
            whole_switch: false,
            kill: None,
            kill_at_write: None,
            cancelled_at: None,
            started_on: Vec::new(),
            behaviours: HashMap::new(),
            crashes: HashMap::new(),
            scripts: HashMap::new(),
            answers: HashMap::new(),
            probes: 0,
            events: Vec::new(),
            next_id: 0,
        }
    }

    /// Adds a running container publishing `port`.
    pub fn add_container(&mut self, name: &str, labels: HashMap<String, String>, port: u16) {
        self.next_id += 1;
        self.containers.push(FakeContainer {
            id: format!("fake{:04}", self.next_id),
            name: name.to_string(),
            labels,
            state: InstanceState::Running,
            ports: vec![port],
            logs: String::new(),
            probes: VecDeque::new(),
            answer: None,
            answered_healthy: false,
        });
    }

    /// Containers started from `reference` behave so (a container started from an image
    /// without a behaviour answers as the port's script says, else 200).
    pub fn behave(&mut self, reference: &str, behaviour: Behaviour) {
        self.behaviours.insert(reference.to_string(), behaviour);
    }

    /// The process dies at its `calls`-th call from now, counted from 1: every call but the
    /// probes and state checks (their number depends on timing), and each step of a switch
    /// (the write, `nginx -t`, the reload, the restore) unless `whole_switch`. That call's
    /// effect is done and its answer never returns; the returned notification fires then, so
    /// the simulation drops the pass. A later [`World::revive`] starts a new process.
    pub fn kill_after(&mut self, calls: u32) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.kill = Some((calls.max(1), notify.clone()));
        notify
    }

    /// The process dies right after its next write of the upstream file, before `nginx -t`
    /// and the reload: the file then says what nginx does not run.
    pub fn kill_at_next_write(&mut self) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.kill_at_write = Some(notify.clone());
        notify
    }

    /// A new process: its calls are answered again.
    pub fn revive(&mut self) {
        self.dead = false;
        self.kill = None;
        self.kill_at_write = None;
        self.cancelled_at = None;
        self.started_on = self.loaded_ports();
    }

    /// The process's pass is cancelled now (a newer generation, SIGTERM). From here on nginx
    /// may stay on the ports it sends traffic to, or go back to those it sent traffic to when
    /// the process started (a drain's switch back), never move to another: a reload doing so
    /// more than [`CANCEL_GRACE`] later is a violation.
    pub fn cancelled(&mut self) {
        let mut ports = self.loaded_ports();
        ports.extend(self.started_on.iter().copied());
        self.cancelled_at = Some((Instant::now(), ports));
    }

    /// Every port nginx's loaded config names (two during a canary step).
    fn loaded_ports(&self) -> Vec<u16> {
        self.loaded
            .as_deref()
            .map(|t| parse_ports(t, &self.upstream_name))
            .unwrap_or_default()
    }

    /// Counts one step of a switch as a call, unless the switch counts as one.
    fn switch_step(&mut self) -> bool {
        self.whole_switch || self.tick()
    }

    /// Counts one call of the process; false when the process died at it.
    fn tick(&mut self) -> bool {
        if let Some((left, notify)) = &mut self.kill {
            *left -= 1;
            if *left == 0 {
                notify.notify_one();
                self.kill = None;
                self.dead = true;
            }
        }
        !self.dead
    }

    /// The engine does not answer this call, when so scripted.
    fn engine_error(&mut self, action: &str) -> Result<(), RuntimeError> {
        if self.engine_errors == 0 {
            return Ok(());
        }
        self.engine_errors -= 1;
        Err(RuntimeError::Unreachable {
            host: "unix:///fake/docker.sock".into(),
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: 503,
                message: format!("fake: the engine does not answer ({action})"),
            },
        })
    }

    /// Ends the scripted faults: the next calls all succeed (the simulation's quiet phase).
    pub fn calm(&mut self) {
        self.pull_failure = None;
        self.remove_fails.clear();
        self.test_failures = 0;
        self.reload_failures = 0;
        self.restore_fails = false;
        self.read_fails = false;
        self.engine_errors = 0;
        self.scripts.clear();
        self.answers.clear();
    }

    /// The running container publishing `port`.
    pub fn running_on(&self, port: u16) -> Option<&FakeContainer> {
        self.containers
            .iter()
            .find(|c| c.state.is_running() && c.ports.contains(&port))
    }

    /// The container of that name.
    pub fn container(&self, name: &str) -> Option<&FakeContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Whether a container of that name exists and runs.
    pub fn is_running(&self, name: &str) -> bool {
        self.container(name).is_some_and(|c| c.state.is_running())
    }

    /// The port the upstream file sends traffic to.
    pub fn upstream_port(&self) -> Option<u16> {
        self.upstream
            .as_deref()
            .and_then(|t| parse_ports(t, &self.upstream_name).first().copied())
    }

    /// The port the config nginx runs sends traffic to.
    pub fn loaded_port(&self) -> Option<u16> {
        self.loaded
            .as_deref()
            .and_then(|t| parse_ports(t, &self.upstream_name).first().copied())
    }

    /// Points the upstream file, and nginx, at `port` (as a finished switch leaves them).
    pub fn serve(&mut self, port: u16, comment: &str) {
        let text = render(&self.upstream_name, port, comment, 0);
        self.upstream = Some(text.clone());
        self.loaded = Some(text);
    }

    /// The container `name` keeps running for `checks` more state checks, then exits with
    /// `code` after printing `logs`.
    pub fn crash_after(&mut self, name: &str, checks: u32, code: i64, logs: &str) {
        self.crashes.insert(
            name.to_string(),
            Crash {
                checks,
                code,
                logs: logs.to_string(),
            },
        );
    }

    /// Probes of `port` answer these outcomes first, in order.
    pub fn script(&mut self, port: u16, outcomes: impl IntoIterator<Item = ProbeOutcome>) {
        self.scripts.entry(port).or_default().extend(outcomes);
    }

    /// Once its script is used up, every probe of `port` answers `outcome`.
    pub fn answer(&mut self, port: u16, outcome: ProbeOutcome) {
        self.answers.insert(port, outcome);
    }

    /// Runs `event` just before the `nth` probe (counted over every port, from 1) is answered.
    pub fn at_probe(&mut self, nth: u32, event: impl FnOnce(&mut World) + Send + 'static) {
        self.events.push((nth, Box::new(event)));
    }

    /// Drops the events of [`World::at_probe`] that have not come yet.
    pub fn forget_events(&mut self) {
        self.events.clear();
    }

    /// Probes made so far.
    pub fn probes(&self) -> u32 {
        self.probes
    }

    /// Whether the calls include `call`.
    pub fn called(&self, call: &Call) -> bool {
        self.calls.contains(call)
    }

    /// Bookkeeping before `name` is removed: a running container nginx may send traffic to
    /// (its loaded config, the upstream file it loads next, or its old workers not yet
    /// retired) must not go.
    fn removing(&mut self, name: &str) {
        let Some(c) = self.container(name).filter(|c| c.state.is_running()) else {
            return;
        };
        let at_risk = [self.loaded_port(), self.upstream_port()]
            .into_iter()
            .flatten()
            .chain(self.unretired.iter().copied())
            .find(|p| c.ports.contains(p));
        if let Some(port) = at_risk {
            let violation = format!(
                "{name} was removed while nginx may send it traffic (port {port}: loaded {:?}, \
                 upstream file {:?}, old workers on {:?})",
                self.loaded_port(),
                self.upstream_port(),
                self.unretired
            );
            self.violations.push(violation);
        }
    }

    fn state(&mut self, name: &str) -> Option<InstanceState> {
        let index = self.containers.iter().position(|c| c.name == name)?;
        if let Some(crash) = self.crashes.get_mut(name) {
            if crash.checks == 0 {
                let crash = self.crashes.remove(name).expect("present");
                let c = &mut self.containers[index];
                c.state = InstanceState::Exited { code: crash.code };
                c.logs = crash.logs;
            } else {
                crash.checks -= 1;
            }
        }
        Some(self.containers[index].state.clone())
    }

    fn probe(&mut self, port: u16) -> ProbeOutcome {
        self.calls.push(Call::Probe(port));
        self.probes += 1;
        let nth = self.probes;
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.events)
            .into_iter()
            .partition(|(at, _)| *at == nth);
        self.events = later;
        for (_, event) in due {
            event(self);
        }
        let Some(index) = self
            .containers
            .iter()
            .position(|c| c.state.is_running() && c.ports.contains(&port))
        else {
            return ProbeOutcome::Unreachable("connection refused".into());
        };
        let container = &mut self.containers[index];
        let outcome = self
            .scripts
            .get_mut(&port)
            .and_then(VecDeque::pop_front)
            .or_else(|| self.answers.get(&port).cloned())
            .or_else(|| container.probes.pop_front())
            .or_else(|| container.answer.clone())
            .unwrap_or(ProbeOutcome::Healthy(200));
        if matches!(outcome, ProbeOutcome::Healthy(_)) {
            container.answered_healthy = true;
        }
        outcome
    }

    /// Puts `previous` back after a failed test or reload, as `Nginx::restore` does.
    fn restore(&mut self, previous: Option<String>) -> Result<(), ProxyError> {
        self.calls.push(Call::Restore);
        if self.restore_fails {
            return Err(ProxyError::Write {
                action: if previous.is_some() {
                    "restore"
                } else {
                    "remove"
                },
                path: self.upstream_path.clone(),
                source: io::Error::other("fake: disk full"),
            });
        }
        self.upstream = previous;
        Ok(())
    }

    fn reload(&mut self) -> Result<(), ProxyError> {
        self.calls.push(Call::Reload);
        if self.reload_failures > 0 {
            self.reload_failures -= 1;
            return Err(ProxyError::ReloadFailed {
                command: "nginx -s reload".into(),
                output: "exit status: 1\nfake: nginx: [error] reload refused".into(),
            });
        }
        let before = self.loaded_port();
        // Traffic moves away from a running container: what it moves to must run. (From a
        // port where nothing runs, production was down already.)
        let from_running = before.is_some_and(|p| self.running_on(p).is_some());
        self.loaded = self.upstream.clone();
        let after = self.loaded_port();
        if after != before {
            self.unretired.extend(before);
        }
        if let Some((at, kept)) = &self.cancelled_at {
            let moved: Vec<u16> = self
                .loaded_ports()
                .into_iter()
                .filter(|p| !kept.contains(p))
                .collect();
            if !moved.is_empty() && at.elapsed() > CANCEL_GRACE {
                let violation = format!(
                    "nginx was switched to port {moved:?} {:?} after the pass was cancelled",
                    at.elapsed()
                );
                self.violations.push(violation);
            }
        }
        if let Some(port) = after {
            self.now_served(port, after != before, from_running);
        }
        Ok(())
    }

    /// Bookkeeping after nginx was reloaded to send traffic to `port` (`moved`: it sent it
    /// elsewhere before; `from_running`: to a running container).
    fn now_served(&mut self, port: u16, moved: bool, from_running: bool) {
        match self.running_on(port) {
            Some(c) if c.answered_healthy => {
                let image = c.labels.get(LABEL_DESIRED).cloned().unwrap_or_default();
                if !self.served.contains(&image) {
                    self.served.push(image);
                }
            }
            // Reloading the config it runs: the traffic goes nowhere new; or it went nowhere
            // before either.
            None if !moved || !from_running => {}
            Some(c) => {
                let violation = format!(
                    "nginx was reloaded to send traffic to {}, which never answered healthy",
                    c.name
                );
                self.violations.push(violation);
            }
            None => {
                let violation = format!(
                    "nginx was reloaded to send traffic to port {port}, where nothing runs"
                );
                self.violations.push(violation);
            }
        }
    }

    /// [`Proxy::switch`], keeping the contract of `Nginx::switch_locked`.
    /// Writes `text`, which names `port` first, then tests and reloads as nginx would.
    fn switch(&mut self, text: String, port: u16) -> Result<(), ProxyError> {
        self.calls.push(Call::Write(port));
        let previous = self.upstream.clone();
        self.upstream = Some(text);
        if let Some(notify) = self.kill_at_write.take() {
            notify.notify_one();
            self.dead = true;
        }
        // A process that dies part-way gets no answer: what it returns then is never seen.
        if !self.switch_step() || self.dead {
            return Ok(());
        }

        self.calls.push(Call::Test);
        if self.test_failures > 0 {
            self.test_failures -= 1;
            let e = ProxyError::TestFailed {
                command: "nginx -t".into(),
                output: "exit status: 1\nfake: nginx: [emerg] test failed".into(),
            };
            if !self.switch_step() {
                return Ok(());
            }
            self.restore(previous)?;
            return Err(e);
        }
        if !self.switch_step() {
            return Ok(());
        }

        let reloaded = self.reload();
        if !self.switch_step() {
            return Ok(());
        }
        if let Err(e) = reloaded {
            self.restore(previous)?;
            if !self.switch_step() {
                return Ok(());
            }
            if let Err(again) = self.reload() {
                return Err(ProxyError::Unsettled {
                    port,
                    cause: Box::new(e),
                    again: Box::new(again),
                });
            }
            return Err(e);
        }
        Ok(())
    }
}

/// The shared world, and the three fakes over it.
#[derive(Clone)]
pub struct Fakes {
    world: Arc<Mutex<World>>,
}

impl Fakes {
    /// An empty world: no container, no image, no upstream file.
    pub fn new(upstream_name: &str, upstream_path: PathBuf) -> Fakes {
        Fakes {
            world: Arc::new(Mutex::new(World::new(upstream_name, upstream_path))),
        }
    }

    /// The world, to set up or read back. Never held across an await.
    pub fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn runtime(&self) -> FakeRuntime {
        FakeRuntime(self.clone())
    }

    pub fn proxy(&self) -> FakeProxy {
        FakeProxy(self.clone())
    }

    pub fn prober(&self) -> FakeProber {
        FakeProber(self.clone())
    }

    /// One call of the process: `f` on the world, counted for [`World::kill_after`] when
    /// `counted`. A dead process's calls never return: neither the one it died at nor any
    /// later one (the simulation drops its pass).
    async fn call<T>(&self, counted: bool, f: impl FnOnce(&mut World) -> T) -> T {
        let answer = {
            let mut world = self.world();
            if world.dead {
                None
            } else {
                let answer = f(&mut world);
                if counted {
                    world.tick();
                }
                (!world.dead).then_some(answer)
            }
        };
        match answer {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }
}

fn api_error(action: String, message: &str) -> RuntimeError {
    RuntimeError::Api {
        action,
        source: bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: message.to_string(),
        },
    }
}

/// The container engine of the [`World`].
pub struct FakeRuntime(Fakes);

impl Runtime for FakeRuntime {
    async fn containers(&self, _app: &str) -> Result<Vec<Instance>, RuntimeError> {
        self.0
            .call(true, |world| {
                world.engine_error("list containers")?;
                let mut containers: Vec<Instance> = world
                    .containers
                    .iter()
                    .map(FakeContainer::observed)
                    .collect();
                containers.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(containers)
            })
            .await
    }

    /// A local container answers on loopback; the engine is not asked (as [`crate::apply::docker::Docker`]).
    async fn endpoints(&self, _name: &str, port: u16) -> Result<Endpoints, RuntimeError> {
        Ok(Endpoints::loopback(port))
    }

    async fn image(&self, reference: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        self.0
            .call(true, |world| {
                world.engine_error("inspect image")?;
                Ok(world
                    .images
                    .iter()
                    .position(|i| i == reference)
                    .map(|i| ImageInfo {
                        id: format!("sha256:fake{i:04}"),
                        repo_digests: Vec::new(),
                    }))
            })
            .await
    }

    async fn pull(&self, reference: &str) -> Result<(), RuntimeError> {
        self.0
            .call(true, |world| {
                world.calls.push(Call::Pull(reference.to_string()));
                world.engine_error("pull")?;
                match world.pull_failure.take() {
                    Some(PullFailure::Transient) => Err(RuntimeError::RegistryUnreachable {
                        reference: reference.to_string(),
                        message: "fake: connection refused".into(),
                    }),
                    Some(PullFailure::Permanent) => Err(RuntimeError::ImageNotFound {
                        reference: reference.to_string(),
                        registry: "registry.test".into(),
                        message: "fake: manifest unknown".into(),
                    }),
                    None => {
                        world.images.push(reference.to_string());
                        Ok(())
                    }
                }
            })
            .await
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        self.0
            .call(true, |world| {
                world.calls.push(Call::Run(spec.name.clone()));
                world.engine_error("create container")?;
                if world.container(&spec.name).is_some() {
                    return Err(RuntimeError::NameTaken {
                        name: spec.name.clone(),
                    });
                }
                if !world.images.contains(&spec.image) {
                    return Err(api_error(
                        format!("create container {}", spec.name),
                        &format!("No such image: {}", spec.image),
                    ));
                }
                if world.loaded_port() == Some(spec.host_port) {
                    let violation = format!(
                        "{} was started on port {}, where nginx sends traffic, before any \
                         health check",
                        spec.name, spec.host_port
                    );
                    world.violations.push(violation);
                }
                world.add_container(&spec.name, spec.labels.clone(), spec.host_port);
                if let Some(behaviour) = world.behaviours.get(&spec.image).cloned() {
                    let c = world.containers.last_mut().expect("just added");
                    c.probes = behaviour.probes.into();
                    c.answer = Some(behaviour.answer);
                    match behaviour.crash_after {
                        Some(checks) => world.crash_after(&spec.name, checks, 1, "fake: crashed"),
                        None => {
                            world.crashes.remove(&spec.name);
                        }
                    }
                }
                Ok(())
            })
            .await
    }

    async fn state(&self, name: &str) -> Result<Option<InstanceState>, RuntimeError> {
        self.0
            .call(false, |world| {
                world.engine_error("inspect container")?;
                Ok(world.state(name))
            })
            .await
    }

    async fn logs(&self, name: &str, _lines: usize) -> Result<String, RuntimeError> {
        self.0
            .call(true, |world| {
                Ok(world
                    .container(name)
                    .map(|c| c.logs.clone())
                    .unwrap_or_default())
            })
            .await
    }

    async fn images(&self, repository: &str) -> Result<Vec<LocalImage>, RuntimeError> {
        self.0
            .call(true, |world| {
                world.engine_error("list images")?;
                Ok(world
                    .images
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.starts_with(repository))
                    .map(|(i, r)| {
                        let pinned = r.contains('@');
                        LocalImage {
                            id: format!("sha256:fake{i:04}"),
                            tags: if pinned { Vec::new() } else { vec![r.clone()] },
                            digests: if pinned { vec![r.clone()] } else { Vec::new() },
                        }
                    })
                    .collect())
            })
            .await
    }

    async fn remove_image(&self, id: &str) -> Result<(), RuntimeError> {
        self.0
            .call(true, |world| {
                world.calls.push(Call::RemoveImage(id.to_string()));
                world.engine_error("remove image")?;
                let in_use = world
                    .containers
                    .iter()
                    .any(|c| c.labels.get(LABEL_IMAGE).map(String::as_str) == Some(id));
                if in_use {
                    return Err(api_error(
                        format!("remove image {id}"),
                        "image is being used by a container",
                    ));
                }
                world.images.retain(|i| i != id);
                Ok(())
            })
            .await
    }

    async fn registry_digest(&self, _reference: &str) -> Option<String> {
        None
    }

    async fn remove(&self, name: &str, _grace: Duration) -> Result<(), RuntimeError> {
        self.0
            .call(true, |world| {
                world.calls.push(Call::Remove(name.to_string()));
                world.engine_error("remove container")?;
                if world.remove_fails.iter().any(|n| n == name) {
                    return Err(api_error(
                        format!("remove container {name}"),
                        "fake: the engine refused",
                    ));
                }
                world.removing(name);
                world.containers.retain(|c| c.name != name);
                world.crashes.remove(name);
                Ok(())
            })
            .await
    }
}

/// nginx and its upstream file in the [`World`].
pub struct FakeProxy(Fakes);

impl Proxy for FakeProxy {
    /// A read changes nothing: a dead process's reads are answered (they cannot hang, and
    /// its next call that can does).
    fn read(&self) -> Result<Option<String>, ProxyError> {
        let mut world = self.0.world();
        world.tick();
        if world.read_fails {
            return Err(ProxyError::Read {
                path: world.upstream_path.clone(),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            });
        }
        Ok(world.upstream.clone())
    }

    fn upstream_weighted(&self) -> Result<Vec<(SocketAddr, u32)>, ProxyError> {
        let name = self.0.world().upstream_name.clone();
        Ok(self
            .read()?
            .map(|text| parse_weighted(&text, &name))
            .unwrap_or_default())
    }

    fn preview_servers(&self) -> Result<Vec<SocketAddr>, ProxyError> {
        let name = preview_name(&self.0.world().upstream_name);
        Ok(self
            .read()?
            .map(|text| parse_servers(&text, &name))
            .unwrap_or_default())
    }

    async fn switch_to(&self, servers: &[SocketAddr], comment: &str) -> Result<(), ProxyError> {
        let port = servers.first().map_or(0, |s| s.port());
        let (whole, name, preview) = {
            let world = self.0.world();
            (
                world.whole_switch,
                world.upstream_name.clone(),
                world.preview,
            )
        };
        let mut text = render_servers(&name, servers, comment, 0);
        if preview {
            text.push_str(&render_preview(&name, servers, comment, 0));
        }
        // Each step of the switch counts as a call of its own (see `World::switch`).
        self.0.call(whole, |world| world.switch(text, port)).await
    }

    async fn switch_weighted(
        &self,
        servers: &[(SocketAddr, u32)],
        comment: &str,
    ) -> Result<(), ProxyError> {
        let port = servers.first().map_or(0, |(s, _)| s.port());
        let (whole, name) = {
            let world = self.0.world();
            (world.whole_switch, world.upstream_name.clone())
        };
        let text = render_weighted(&name, servers, comment, 0);
        self.0.call(whole, |world| world.switch(text, port)).await
    }

    async fn switch_preview(
        &self,
        live: &[SocketAddr],
        live_comment: &str,
        preview: &[SocketAddr],
        preview_comment: &str,
    ) -> Result<(), ProxyError> {
        let port = live.first().map_or(0, |s| s.port());
        let (whole, name) = {
            let world = self.0.world();
            (world.whole_switch, world.upstream_name.clone())
        };
        let mut text = render_servers(&name, live, live_comment, 0);
        text.push_str(&render_preview(&name, preview, preview_comment, 0));
        self.0.call(whole, |world| world.switch(text, port)).await
    }

    async fn wait_retired(&self, _limit: Duration) -> bool {
        self.0
            .call(true, |world| {
                world.calls.push(Call::WaitRetired);
                world.unretired.clear();
                true
            })
            .await
    }
}

/// Health probes answered by the [`World`]'s script.
pub struct FakeProber(Fakes);

impl Prober for FakeProber {
    async fn probe_at(&self, addr: SocketAddr) -> ProbeOutcome {
        let port = addr.port();
        self.0.call(false, |world| world.probe(port)).await
    }
}

mod tests {
    use super::*;

    fn fakes() -> Fakes {
        Fakes::new("fieldtrack_api", PathBuf::from("/fake/upstream.conf"))
    }

    #[tokio::test]
    async fn a_failed_test_puts_the_previous_bytes_back_and_never_reloads() {
        let fakes = fakes();
        let hand_written = "upstream fieldtrack_api {\n  server 127.0.0.1:3001; # by hand\n}\n";
        {
            let mut world = fakes.world();
            world.upstream = Some(hand_written.to_string());
            world.loaded = Some(hand_written.to_string());
            world.test_failures = 1;
        }
        let e = fakes.proxy().switch(3002, "green").await.unwrap_err();
        assert!(matches!(e, ProxyError::TestFailed { .. }), "{e}");
        let world = fakes.world();
        assert_eq!(world.upstream.as_deref(), Some(hand_written));
        assert_eq!(world.loaded.as_deref(), Some(hand_written));
        assert!(!world.called(&Call::Reload));
    }

    #[tokio::test]
    async fn a_failed_first_switch_leaves_no_file() {
        let fakes = fakes();
        fakes.world().test_failures = 1;
        assert!(fakes.proxy().switch(3001, "blue").await.is_err());
        assert_eq!(fakes.world().upstream, None);
        assert_eq!(fakes.proxy().upstream_ports().unwrap(), Vec::<u16>::new());
    }

    #[tokio::test]
    async fn a_failed_reload_restores_and_reloads_again_or_is_unsettled() {
        let fakes = fakes();
        fakes.world().serve(3001, "blue");
        let before = fakes.world().upstream.clone();
        fakes.world().reload_failures = 1;
        let e = fakes.proxy().switch(3002, "green").await.unwrap_err();
        assert!(matches!(e, ProxyError::ReloadFailed { .. }), "{e}");
        assert!(!e.leaves_nginx_unsettled());
        assert_eq!(fakes.world().upstream, before);
        assert_eq!(fakes.world().loaded_port(), Some(3001));

        fakes.world().reload_failures = 2;
        let e = fakes.proxy().switch(3002, "green").await.unwrap_err();
        assert!(e.leaves_nginx_unsettled(), "{e}");

        fakes.world().restore_fails = true;
        fakes.world().test_failures = 1;
        let e = fakes.proxy().switch(3002, "green").await.unwrap_err();
        assert!(e.leaves_nginx_unsettled(), "{e}");
        assert_eq!(fakes.world().upstream_port(), Some(3002));
    }

    #[tokio::test]
    async fn a_crash_comes_after_the_scripted_checks_and_hides_the_ports() {
        let fakes = fakes();
        fakes
            .world()
            .add_container("api-green", HashMap::new(), 3002);
        fakes.world().crash_after("api-green", 1, 3, "panic");
        let runtime = fakes.runtime();
        assert_eq!(
            runtime.state("api-green").await.unwrap(),
            Some(InstanceState::Running)
        );
        assert_eq!(
            runtime.state("api-green").await.unwrap(),
            Some(InstanceState::Exited { code: 3 })
        );
        assert_eq!(runtime.logs("api-green", 20).await.unwrap(), "panic");
        assert!(runtime.containers("api").await.unwrap()[0].ports.is_empty());
        assert_eq!(
            fakes.prober().probe(3002).await,
            ProbeOutcome::Unreachable("connection refused".into())
        );
    }
}

/// Writes nginx access log lines in the background until dropped: every 2 ms one request to
/// each of two ports (the stable color's first), the second's answered `status`.
pub struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(log: std::path::PathBuf, ports: (u16, u16), status: u16) -> Traffic {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Write as _;
            let line = |port: u16, status: u16| {
                format!(
                    "{{\"upstream_addr\":\"127.0.0.1:{port}\",\"status\":\"{status}\",\"upstream_status\":\"{status}\",\"request_time\":\"0.002\"}}\n"
                )
            };
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                // The folder may be gone already (its owner dropped first): nothing to feed.
                let Ok(mut file) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                else {
                    break;
                };
                if file
                    .write_all((line(ports.0, 200) + &line(ports.1, status)).as_bytes())
                    .is_err()
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
