//! The attempt's state machine on the fakes: health gate, switch, drain, switch-back,
//! cancellation and cleanup, each driven through a whole pass (`Pass::reconcile`) in
//! milliseconds, with no Docker engine and no nginx. The real-engine tests in `tests/`
//! stay the proof that the real systems behave as the fakes do.
//!
//! Durations are real but short (10 ms probe interval): the attempt measures time with
//! `std::time::Instant`, which `tokio::time::pause` does not move.

use std::collections::HashMap;
use std::sync::MutexGuard;
use std::time::Duration;

use super::fakes::{Call, FakeProber, FakeProxy, FakeRuntime, Fakes, PullFailure, Traffic, World};
use super::{error_policy, Backoff, Context, Pass, PassOutcome, Progress, ReconcileError, Trigger};
use crate::apply::hooks::HookError;
use crate::config::Config;
use crate::desired::Desired;
use crate::model::probe::ProbeOutcome;
use crate::model::proxy::ProxyError;
use crate::model::runtime::{
    RuntimeError, LABEL_APP, LABEL_COLOR, LABEL_DESIRED, LABEL_GENERATION, LABEL_IMAGE,
};
use crate::model::settings::LABEL_SETTINGS;
use crate::model::Color;
use crate::state::audit::AttemptOutcome;
use crate::state::status::Step;
use crate::state::{audit, history};
use tokio_util::sync::CancellationToken;

const REPO: &str = "registry.test/fieldtrack/api";
const BLUE: u16 = 3001;
const GREEN: u16 = 3002;
/// Long enough that a drain only ends early, by a failure or a cancellation.
const LONG_DRAIN: Duration = Duration::from_secs(2);

type FakeContext = Context<FakeRuntime, FakeProxy, FakeProber>;

/// A fieldtrack site: its config and state files in a temp folder, and the fake world.
struct Site {
    _dir: tempfile::TempDir,
    cfg: Config,
    fakes: Fakes,
}

impl Site {
    /// Probes every 10 ms, a 50 ms health deadline, no drain, no auto-rollback.
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("repository = \"{REPO}\"\n[nginx]\nupstream_file = \"upstream.conf\"\n");
        let mut cfg = Config::parse(&text, &dir.path().join("fieldtrack.toml"), None).unwrap();
        assert_eq!(
            (cfg.port(Color::Blue), cfg.port(Color::Green)),
            (BLUE, GREEN)
        );
        cfg.health.interval = Duration::from_millis(10);
        cfg.health.attempts = 5;
        cfg.rollout.drain = Duration::ZERO;
        cfg.rollout.auto_rollback = false;
        cfg.container.stop_timeout = Duration::ZERO;
        std::fs::create_dir_all(&cfg.state_dir).unwrap();
        let fakes = Fakes::new(&cfg.nginx.upstream_name, cfg.nginx.upstream_file.clone());
        Site {
            _dir: dir,
            cfg,
            fakes,
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.fakes.world()
    }

    /// A running container of `color` that was started for `image`.
    fn running(&self, color: Color, image: &str) {
        let reference = format!("{REPO}:{image}");
        let labels = HashMap::from([
            (LABEL_APP.to_string(), self.cfg.app.clone()),
            (LABEL_COLOR.to_string(), color.to_string()),
            (LABEL_IMAGE.to_string(), reference.clone()),
            (LABEL_DESIRED.to_string(), image.to_string()),
            (
                LABEL_GENERATION.to_string(),
                format!("generation-of-{image}"),
            ),
        ]);
        let mut world = self.world();
        world.add_container(
            &self.cfg.container_name(color),
            labels,
            self.cfg.port(color),
        );
        world.images.push(reference);
    }

    /// `color` runs `image` and nginx sends it the traffic.
    fn live(&self, color: Color, image: &str) {
        self.running(color, image);
        let comment = format!("{color} {}:{image}", self.cfg.app);
        self.world().serve(self.cfg.port(color), &comment);
    }

    fn set_history(&self, entries: &[&str]) {
        std::fs::write(&self.cfg.history_file, entries.join("\n") + "\n").unwrap();
    }

    fn history(&self) -> Vec<String> {
        history::read(&self.cfg.history_file).unwrap()
    }

    fn last_audit_outcome(&self) -> String {
        let records = audit::read(&self.cfg.state_dir.join(crate::state::AUDIT_FILE)).unwrap();
        records.last().expect("an audit line").outcome.to_string()
    }

    fn context(&self) -> FakeContext {
        Context::new(
            self.cfg.clone(),
            self.fakes.runtime(),
            self.fakes.proxy(),
            self.fakes.prober(),
        )
    }

    /// Writes the desired file for `image` and returns what it says.
    fn desired(&self, image: &str) -> Desired {
        let text = format!("image = \"{image}\"\n");
        std::fs::write(&self.cfg.desired_file, &text).unwrap();
        Desired::parse(&text, &self.cfg.desired_file, &self.cfg).unwrap()
    }

    /// One pass towards `image` by a fresh process.
    async fn pass(&self, image: &str) -> Result<PassOutcome, ReconcileError> {
        pass(
            &self.context(),
            &self.desired(image),
            CancellationToken::new(),
        )
        .await
    }
}

/// One pass, which must end (a broken branch may otherwise probe or drain forever);
/// `cancel` cancels it. A canary runs pass by pass: its passes follow each other, a tick
/// apart, as the daemon runs them, until it ended.
async fn pass(
    ctx: &FakeContext,
    desired: &Desired,
    cancel: CancellationToken,
) -> Result<PassOutcome, ReconcileError> {
    let passes = async {
        loop {
            let pass = Pass::new(ctx, Trigger::Cli).with_cancel(cancel.clone());
            match pass.reconcile(desired).await {
                Ok(PassOutcome::Canary { look_again, .. }) => tokio::time::sleep(look_again).await,
                other => return other,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), passes)
        .await
        .expect("the pass ends")
}

/// Exactly one pass, a canary's included.
async fn one_pass(ctx: &FakeContext, desired: &Desired) -> Result<PassOutcome, ReconcileError> {
    let pass = Pass::new(ctx, Trigger::Cli);
    tokio::time::timeout(Duration::from_secs(20), pass.reconcile(desired))
        .await
        .expect("the pass ends")
}

/// Blue serves v1, the history says v1: the usual start of a deployment of v2 into green.
fn site_with_blue_live() -> Site {
    let site = Site::new();
    site.live(Color::Blue, "v1");
    site.set_history(&["v1"]);
    site
}

/// Production as [`site_with_blue_live`] left it: upstream file and nginx on blue, blue
/// running, the history unchanged.
fn assert_production_untouched(site: &Site, upstream_before: &Option<String>) {
    let world = site.world();
    assert_eq!(&world.upstream, upstream_before, "upstream file changed");
    assert_eq!(world.loaded_port(), Some(BLUE));
    assert!(world.is_running("api-blue"));
    drop(world);
    assert_eq!(site.history(), ["v1"]);
}

#[tokio::test]
async fn first_deployment_goes_live_in_blue_with_no_old_color_to_retire() {
    let site = Site::new();

    let outcome = site.pass("v1").await.unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    let world = site.world();
    assert_eq!(world.upstream_port(), Some(BLUE));
    assert_eq!(world.loaded_port(), Some(BLUE));
    assert!(world.is_running("api-blue"));
    assert!(world.called(&Call::Pull(format!("{REPO}:v1"))));
    assert!(world.called(&Call::Run("api-blue".into())));
    assert!(!world.calls.iter().any(|c| matches!(c, Call::Remove(_))));
    drop(world);
    assert_eq!(site.history(), ["v1"]);
    assert_eq!(site.last_audit_outcome(), "succeeded");
}

#[tokio::test]
async fn a_pass_tells_its_watcher_each_step_the_health_gate_and_the_switch_in_order() {
    let site = site_with_blue_live();
    let ctx = site.context();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let pass = Pass::new(&ctx, Trigger::Cli)
        .with_progress(Box::new(move |p| sink.lock().unwrap().push(p)));

    pass.reconcile(&site.desired("v2")).await.unwrap();

    let seen = seen.lock().unwrap();
    let step = |s| Progress::Step(s);
    assert_eq!(
        *seen,
        [
            step(Step::Pulling),
            step(Step::Starting),
            step(Step::Health),
            Progress::Health {
                probes: 1,
                passed: true
            },
            step(Step::Switching),
            Progress::Switched {
                color: "green".into(),
                port: GREEN
            },
            step(Step::Draining),
            step(Step::Cleanup),
        ]
    );
}

#[tokio::test]
async fn candidate_that_exits_during_the_gate_is_removed_at_once_and_production_untouched() {
    let mut site = site_with_blue_live();
    // A deadline of a second: an exit must end the gate long before it.
    site.cfg.health.attempts = 100;
    site.world().answer(GREEN, ProbeOutcome::Unhealthy(503));
    site.world()
        .crash_after("api-green", 2, 1, "panic: DATABASE_URL is not set");
    let before = site.world().upstream.clone();

    let e = site.pass("v2").await.unwrap_err();

    match &e {
        ReconcileError::CandidateExited {
            container,
            state,
            logs,
            ..
        } => {
            assert_eq!(container, "api-green");
            assert_eq!(state, "exited with code 1");
            assert!(logs.contains("DATABASE_URL is not set"), "{logs}");
        }
        other => panic!("expected CandidateExited, got {other:?}"),
    }
    assert!(
        site.world().probes() <= 3,
        "{} probes",
        site.world().probes()
    );
    assert!(site.world().container("api-green").is_none());
    assert!(!site.world().called(&Call::Write(GREEN)));
    assert_production_untouched(&site, &before);
    assert_eq!(site.last_audit_outcome(), "failed");
}

#[tokio::test]
async fn candidate_never_answering_2xx_fails_at_the_gate_deadline() {
    let site = site_with_blue_live();
    site.world().answer(GREEN, ProbeOutcome::Unhealthy(500));
    let before = site.world().upstream.clone();

    let e = site.pass("v2").await.unwrap_err();

    match &e {
        ReconcileError::Unhealthy { last, deadline, .. } => {
            assert_eq!(last, "HTTP 500");
            assert_eq!(*deadline, Duration::from_millis(50));
        }
        other => panic!("expected Unhealthy, got {other:?}"),
    }
    assert_eq!(error_policy(&e), super::error::GENERATION_FAILED);
    assert!(site.world().container("api-green").is_none());
    assert!(!site.world().called(&Call::Write(GREEN)));
    assert_production_untouched(&site, &before);
}

#[tokio::test]
async fn candidate_refusing_the_probes_host_fails_with_the_health_host_hint() {
    for (host, hinted) in [(None, true), (Some("api.example.test"), false)] {
        let mut site = site_with_blue_live();
        site.cfg.health.host = host.map(str::to_string);
        site.world().answer(GREEN, ProbeOutcome::Unhealthy(403));

        let e = site.pass("v2").await.unwrap_err();

        let message = e.to_string();
        assert!(message.contains("(last probe: HTTP 403"), "{message}");
        let hint = format!("the app may refuse the Host 127.0.0.1:{GREEN}");
        assert_eq!(message.contains(&hint), hinted, "host {host:?}: {message}");
        assert_eq!(message.contains("set health.host"), hinted, "{message}");
    }
}

#[tokio::test]
async fn candidate_slow_to_answer_passes_the_gate_once_it_does() {
    let mut site = site_with_blue_live();
    site.cfg.health.attempts = 100;
    site.world().script(
        GREEN,
        [
            ProbeOutcome::Unreachable("connection refused".into()),
            ProbeOutcome::Unreachable("connection refused".into()),
            ProbeOutcome::Unhealthy(503),
        ],
    );

    site.pass("v2").await.unwrap();

    let world = site.world();
    assert_eq!(world.probes(), 4);
    assert_eq!(world.upstream_port(), Some(GREEN));
    assert!(world.container("api-blue").is_none());
    drop(world);
    assert_eq!(site.history(), ["v2", "v1"]);
}

#[tokio::test]
async fn cancel_during_the_gate_removes_the_candidate_and_leaves_production_untouched() {
    let mut site = site_with_blue_live();
    site.cfg.health.attempts = 100;
    site.world().answer(GREEN, ProbeOutcome::Unhealthy(503));
    let ctx = site.context();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    site.world().at_probe(2, move |_| token.cancel());
    let before = site.world().upstream.clone();

    let e = pass(&ctx, &site.desired("v2"), cancel).await.unwrap_err();

    assert!(matches!(e, ReconcileError::Cancelled), "{e:?}");
    assert!(
        site.world().probes() <= 3,
        "{} probes",
        site.world().probes()
    );
    assert!(site.world().container("api-green").is_none());
    assert!(!site.world().called(&Call::Write(GREEN)));
    assert_production_untouched(&site, &before);
    assert_eq!(site.last_audit_outcome(), "cancelled");
}

#[tokio::test]
async fn cancel_after_the_gate_passed_stops_before_the_switch() {
    let site = site_with_blue_live();
    let ctx = site.context();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    // The first probe answers 200; the cancellation arrives while it is in flight.
    site.world().at_probe(1, move |_| token.cancel());
    let before = site.world().upstream.clone();

    let e = pass(&ctx, &site.desired("v2"), cancel).await.unwrap_err();

    assert!(matches!(e, ReconcileError::Cancelled), "{e:?}");
    assert!(site.world().container("api-green").is_none());
    assert!(!site.world().called(&Call::Write(GREEN)));
    assert_production_untouched(&site, &before);
}

#[tokio::test]
async fn cancel_before_the_candidate_starts_starts_nothing() {
    let site = site_with_blue_live();
    let ctx = site.context();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let before = site.world().upstream.clone();

    let e = pass(&ctx, &site.desired("v2"), cancel).await.unwrap_err();

    assert!(matches!(e, ReconcileError::Cancelled), "{e:?}");
    assert!(!site.world().called(&Call::Run("api-green".into())));
    assert!(site.world().container("api-green").is_none());
    assert_production_untouched(&site, &before);
}

#[tokio::test]
async fn nginx_test_failure_restores_the_exact_upstream_bytes_and_removes_the_candidate() {
    let site = site_with_blue_live();
    // The operator's own placeholder: restored byte for byte, not re-rendered.
    let hand_written = format!(
        "# by hand, before fieldtrack\nupstream {} {{\n\tserver 127.0.0.1:{BLUE} max_fails=0;\n}}\n",
        site.cfg.nginx.upstream_name
    );
    site.world().upstream = Some(hand_written.clone());
    site.world().loaded = Some(hand_written.clone());
    site.world().test_failures = 1;

    let e = site.pass("v2").await.unwrap_err();

    assert!(
        matches!(e, ReconcileError::Switch(ProxyError::TestFailed { .. })),
        "{e:?}"
    );
    let world = site.world();
    assert_eq!(world.upstream.as_deref(), Some(hand_written.as_str()));
    assert_eq!(world.loaded.as_deref(), Some(hand_written.as_str()));
    assert!(!world.called(&Call::Reload));
    assert!(world.container("api-green").is_none());
    drop(world);
    assert_production_untouched(&site, &Some(hand_written));
}

#[tokio::test]
async fn reload_failure_restores_the_upstream_file_and_removes_the_candidate() {
    let site = site_with_blue_live();
    site.world().reload_failures = 1;
    let before = site.world().upstream.clone();

    let e = site.pass("v2").await.unwrap_err();

    assert!(
        matches!(e, ReconcileError::Switch(ProxyError::ReloadFailed { .. })),
        "{e:?}"
    );
    assert!(site.world().container("api-green").is_none());
    assert_production_untouched(&site, &before);
}

#[tokio::test]
async fn switch_that_failed_half_way_keeps_the_candidate_when_the_second_reload_fails() {
    let site = site_with_blue_live();
    site.world().reload_failures = 2;

    let e = site.pass("v2").await.unwrap_err();

    match &e {
        ReconcileError::StillServed { container, .. } => assert_eq!(container, "api-green"),
        other => panic!("expected StillServed, got {other:?}"),
    }
    let world = site.world();
    assert!(world.is_running("api-green"), "nginx may send it traffic");
    assert!(world.is_running("api-blue"));
    assert!(!world.calls.iter().any(|c| matches!(c, Call::Remove(_))));
    drop(world);
    assert_eq!(site.history(), ["v1"]);
}

#[tokio::test]
async fn switch_that_failed_half_way_keeps_the_candidate_when_the_restore_fails() {
    let site = site_with_blue_live();
    site.world().test_failures = 1;
    site.world().restore_fails = true;

    let e = site.pass("v2").await.unwrap_err();

    match &e {
        ReconcileError::StillServed { container, .. } => assert_eq!(container, "api-green"),
        other => panic!("expected StillServed, got {other:?}"),
    }
    let world = site.world();
    // The file still points at green: the next reload would send it traffic.
    assert_eq!(world.upstream_port(), Some(GREEN));
    assert!(world.is_running("api-green"));
    assert!(world.is_running("api-blue"));
    drop(world);
    assert_eq!(site.history(), ["v1"]);
}

#[tokio::test]
async fn three_failed_probes_in_the_drain_switch_traffic_back_to_the_old_color() {
    let mut site = site_with_blue_live();
    site.cfg.rollout.drain = LONG_DRAIN;
    site.world().script(
        GREEN,
        [
            ProbeOutcome::Healthy(200),
            ProbeOutcome::Unhealthy(500),
            ProbeOutcome::Unreachable("connection reset".into()),
            ProbeOutcome::Unhealthy(500),
        ],
    );

    let e = site.pass("v2").await.unwrap_err();

    match &e {
        ReconcileError::FailedAfterSwitch {
            back_to, reason, ..
        } => {
            assert_eq!(back_to.as_deref(), Some("blue"));
            assert!(reason.contains("3 failed probes in a row"), "{reason}");
        }
        other => panic!("expected FailedAfterSwitch, got {other:?}"),
    }
    let world = site.world();
    assert_eq!(world.upstream_port(), Some(BLUE));
    assert_eq!(world.loaded_port(), Some(BLUE));
    assert!(world.called(&Call::Write(GREEN)));
    assert!(world.container("api-green").is_none());
    assert!(world.is_running("api-blue"));
    drop(world);
    assert_eq!(site.history(), ["v1"]);
    assert_eq!(site.last_audit_outcome(), "rolled_back");
}

#[tokio::test]
async fn failed_probes_in_the_drain_must_come_in_a_row_to_switch_back() {
    let mut site = site_with_blue_live();
    site.cfg.rollout.drain = Duration::from_millis(300);
    let bad = ProbeOutcome::Unhealthy(500);
    let good = ProbeOutcome::Healthy(200);
    site.world().script(
        GREEN,
        [
            good.clone(),
            bad.clone(),
            bad.clone(),
            good.clone(),
            bad.clone(),
            bad.clone(),
            good,
            bad.clone(),
            bad,
        ],
    );

    site.pass("v2").await.unwrap();

    assert_eq!(site.world().upstream_port(), Some(GREEN));
    assert!(site.world().container("api-blue").is_none());
    assert_eq!(site.history(), ["v2", "v1"]);
}

#[tokio::test]
async fn candidate_exiting_in_the_drain_switches_traffic_back() {
    let mut site = site_with_blue_live();
    site.cfg.rollout.drain = LONG_DRAIN;
    // One state check in the gate, the next one in the drain finds it gone.
    site.world().crash_after("api-green", 1, 137, "killed");

    let e = site.pass("v2").await.unwrap_err();

    match &e {
        ReconcileError::FailedAfterSwitch {
            back_to, reason, ..
        } => {
            assert_eq!(back_to.as_deref(), Some("blue"));
            assert_eq!(reason, "the container exited with code 137");
        }
        other => panic!("expected FailedAfterSwitch, got {other:?}"),
    }
    assert_eq!(site.world().upstream_port(), Some(BLUE));
    assert!(site.world().container("api-green").is_none());
    assert_eq!(site.history(), ["v1"]);
}

#[tokio::test]
async fn drain_failure_with_no_old_color_keeps_traffic_on_the_new_one() {
    let mut site = Site::new();
    site.cfg.rollout.drain = LONG_DRAIN;
    site.world().script(
        BLUE,
        [
            ProbeOutcome::Healthy(200),
            ProbeOutcome::Unhealthy(500),
            ProbeOutcome::Unhealthy(500),
            ProbeOutcome::Unhealthy(500),
        ],
    );

    let e = site.pass("v1").await.unwrap_err();

    assert!(
        matches!(e, ReconcileError::FailedAfterSwitch { back_to: None, .. }),
        "{e:?}"
    );
    let world = site.world();
    assert_eq!(world.upstream_port(), Some(BLUE));
    assert_eq!(world.loaded_port(), Some(BLUE));
    assert!(world.is_running("api-blue"), "it is all there is");
    assert!(!world.called(&Call::Remove("api-blue".into())));
    drop(world);
    assert!(site.history().is_empty());
}

#[tokio::test]
async fn cancel_during_the_drain_leaves_both_colors_running_and_the_history_untouched() {
    let mut site = site_with_blue_live();
    site.cfg.rollout.drain = LONG_DRAIN;
    let ctx = site.context();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    // Probe 1 passes the gate; probe 2 is the drain's first.
    site.world().at_probe(2, move |_| token.cancel());

    let e = pass(&ctx, &site.desired("v2"), cancel).await.unwrap_err();

    match &e {
        ReconcileError::DrainCutShort { image, old } => {
            assert_eq!((image.as_str(), old.as_str()), ("v2", "api-blue"));
        }
        other => panic!("expected DrainCutShort, got {other:?}"),
    }
    let world = site.world();
    assert_eq!(world.upstream_port(), Some(GREEN));
    assert!(world.is_running("api-green"));
    assert!(world.is_running("api-blue"));
    assert!(!world.calls.iter().any(|c| matches!(c, Call::Remove(_))));
    drop(world);
    assert_eq!(site.history(), ["v1"]);
    assert_eq!(site.last_audit_outcome(), "cancelled");
}

#[tokio::test]
async fn a_running_old_color_failing_its_gate_waits_for_nginx_old_workers_before_it_goes() {
    // Found by the simulation (seed 19510, under load): v2's drain was cut short, so nginx's
    // workers of the configuration before the switch may still send blue requests. The
    // rollback to v1 reuses blue, which fails its gate: removing it at once took those
    // requests down.
    let mut site = site_with_blue_live();
    site.cfg.rollout.drain = LONG_DRAIN;
    let ctx = site.context();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    site.world().at_probe(2, move |_| token.cancel());
    let e = pass(&ctx, &site.desired("v2"), cancel).await.unwrap_err();
    assert!(matches!(e, ReconcileError::DrainCutShort { .. }), "{e:?}");
    // The fake's old workers go at the drain's first wait: a process killed before it
    // leaves them sending blue requests.
    site.world().unretired = vec![BLUE];
    site.world().answer(BLUE, ProbeOutcome::Unhealthy(500));

    let e = site.pass("v1").await.unwrap_err();

    assert!(matches!(e, ReconcileError::Unhealthy { .. }), "{e:?}");
    let world = site.world();
    assert!(world.container("api-blue").is_none());
    assert_eq!(world.loaded_port(), Some(GREEN));
    assert_eq!(world.violations, Vec::<String>::new());
}

#[tokio::test]
async fn cleanup_failure_fails_the_pass_and_leaves_the_history_unwritten() {
    let site = site_with_blue_live();
    site.world().remove_fails.push("api-blue".into());

    let e = site.pass("v2").await.unwrap_err();

    assert!(
        matches!(e, ReconcileError::Runtime(RuntimeError::Api { .. })),
        "{e:?}"
    );
    let world = site.world();
    assert_eq!(world.upstream_port(), Some(GREEN));
    assert!(world.is_running("api-green"));
    assert!(world.is_running("api-blue"));
    drop(world);
    assert_eq!(site.history(), ["v1"]);
}

#[tokio::test]
async fn switch_to_an_idle_color_already_running_the_image_starts_no_container() {
    let site = site_with_blue_live();
    site.running(Color::Green, "v2");

    site.pass("v2").await.unwrap();

    let world = site.world();
    assert!(!world.calls.iter().any(|c| matches!(c, Call::Run(_))));
    assert!(!world.calls.iter().any(|c| matches!(c, Call::Pull(_))));
    assert_eq!(world.upstream_port(), Some(GREEN));
    assert!(world.is_running("api-green"));
    assert!(world.container("api-blue").is_none());
    drop(world);
    assert_eq!(site.history(), ["v2", "v1"]);
}

#[tokio::test]
async fn image_that_served_is_recorded_at_the_switch_when_a_newer_generation_takes_over() {
    let site = Site::new();
    // v2 went live, but its drain was cut short: the history never got it.
    site.live(Color::Blue, "v2");
    site.set_history(&["v1"]);
    // The cleanup fails, so only what was recorded at the switch is in the history.
    site.world().remove_fails.push("api-blue".into());

    let e = site.pass("v3").await.unwrap_err();

    assert!(matches!(e, ReconcileError::Runtime(_)), "{e:?}");
    assert_eq!(site.world().upstream_port(), Some(GREEN));
    assert_eq!(site.history(), ["v2", "v1"]);
}

#[tokio::test]
async fn transient_pull_failure_starts_nothing_and_is_retried() {
    let site = site_with_blue_live();
    site.world().pull_failure = Some(PullFailure::Transient);
    let before = site.world().upstream.clone();

    let e = site.pass("v2").await.unwrap_err();

    assert!(
        matches!(
            e,
            ReconcileError::Pull {
                source: RuntimeError::RegistryUnreachable { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        error_policy(&e).delay(
            &mut Backoff::new(Duration::from_secs(4), Duration::from_secs(300), 2),
            Duration::from_secs(3600)
        ),
        Duration::from_secs(4)
    );
    assert!(!site.world().called(&Call::Run("api-green".into())));
    assert_production_untouched(&site, &before);
}

#[tokio::test]
async fn missing_image_starts_nothing_and_waits_for_a_new_desired_state() {
    let site = site_with_blue_live();
    site.world().pull_failure = Some(PullFailure::Permanent);
    let before = site.world().upstream.clone();

    let e = site.pass("v2").await.unwrap_err();

    assert!(
        matches!(
            e,
            ReconcileError::Pull {
                source: RuntimeError::ImageNotFound { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(error_policy(&e), super::error::GENERATION_FAILED);
    assert!(!site.world().called(&Call::Run("api-green".into())));
    assert_production_untouched(&site, &before);
}

#[tokio::test]
async fn pre_switch_hook_failure_removes_the_candidate_before_any_switch() {
    let mut site = site_with_blue_live();
    site.cfg.hooks.pre_switch = vec!["false".into()];
    let before = site.world().upstream.clone();

    let e = site.pass("v2").await.unwrap_err();

    assert!(
        matches!(e, ReconcileError::Hook(HookError::Failed { .. })),
        "{e:?}"
    );
    assert!(site.world().container("api-green").is_none());
    assert!(!site.world().called(&Call::Write(GREEN)));
    assert_production_untouched(&site, &before);
}

#[tokio::test]
async fn cancel_during_the_pre_switch_hook_stops_before_the_switch() {
    let mut site = site_with_blue_live();
    let started = site._dir.path().join("hook-started");
    // A hook that takes its time: the cancellation arrives while it runs.
    site.cfg.hooks.pre_switch = vec![
        "sh".into(),
        "-c".into(),
        format!("touch '{}'; sleep 5", started.display()),
    ];
    let ctx = site.context();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let canceller = tokio::spawn(async move {
        while !started.exists() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        token.cancel();
    });
    let before = site.world().upstream.clone();

    let e = pass(&ctx, &site.desired("v2"), cancel).await.unwrap_err();

    canceller.await.unwrap();
    assert!(matches!(e, ReconcileError::Cancelled), "{e:?}");
    assert!(!site.world().called(&Call::Write(GREEN)));
    assert!(site.world().container("api-green").is_none());
    assert_production_untouched(&site, &before);
    assert_eq!(site.last_audit_outcome(), "cancelled");
}

#[tokio::test]
async fn retire_refuses_to_remove_the_old_color_once_the_upstream_points_back_at_it() {
    let mut site = site_with_blue_live();
    site.cfg.rollout.drain = Duration::from_millis(300);
    // During the drain an operator points the upstream file back at blue by hand.
    let comment = "blue by hand".to_string();
    site.world()
        .at_probe(2, move |world| world.serve(BLUE, &comment));

    let e = site.pass("v2").await.unwrap_err();

    match &e {
        ReconcileError::StillServed {
            container, reason, ..
        } => {
            assert_eq!(container, "api-blue");
            assert!(reason.contains(&format!("port {BLUE}")), "{reason}");
        }
        other => panic!("expected StillServed, got {other:?}"),
    }
    let world = site.world();
    assert!(world.is_running("api-blue"));
    assert!(!world.called(&Call::Remove("api-blue".into())));
    drop(world);
    assert_eq!(site.history(), ["v1"]);
}

#[tokio::test]
async fn reassert_reloads_then_drains_before_removing_the_old_color() {
    let site = Site::new();
    // A pass died after the switch to green: blue still runs, the history has v2.
    site.running(Color::Blue, "v1");
    site.live(Color::Green, "v2");
    site.set_history(&["v2", "v1"]);

    site.pass("v2").await.unwrap();

    let world = site.world();
    let changes: Vec<&Call> = world
        .calls
        .iter()
        .filter(|c| !matches!(c, Call::RemoveImage(_)))
        .collect();
    assert_eq!(
        changes,
        [
            &Call::Write(GREEN),
            &Call::Test,
            &Call::Reload,
            &Call::WaitRetired,
            // The removal's own look (none left by then).
            &Call::WaitRetired,
            &Call::Remove("api-blue".into()),
        ]
    );
    assert!(world.is_running("api-green"));
}

#[tokio::test]
async fn failure_after_the_switch_rolls_the_desired_file_back_with_auto_rollback() {
    let mut site = site_with_blue_live();
    site.cfg.rollout.drain = LONG_DRAIN;
    site.cfg.rollout.auto_rollback = true;
    site.world().script(
        GREEN,
        [
            ProbeOutcome::Healthy(200),
            ProbeOutcome::Unhealthy(500),
            ProbeOutcome::Unhealthy(500),
            ProbeOutcome::Unhealthy(500),
        ],
    );

    let e = site.pass("v2").await.unwrap_err();

    assert!(
        matches!(
            e,
            ReconcileError::FailedAfterSwitch {
                back_to: Some(_),
                ..
            }
        ),
        "{e:?}"
    );
    let now = Desired::load(&site.cfg.desired_file, &site.cfg).unwrap();
    assert_eq!(now.image.as_written(), "v1");
    assert!(
        now.note
            .as_deref()
            .unwrap_or_default()
            .contains("v2 failed after the switch"),
        "{:?}",
        now.note
    );
}

/// Blue serves v1, the history (v1) in a folder of its own that a test may take away, and
/// a drain of 100 ms (probes after the gate's).
fn site_with_its_history_in_a_folder() -> (Site, std::path::PathBuf) {
    let mut site = Site::new();
    let folder = site._dir.path().join("history");
    std::fs::create_dir(&folder).unwrap();
    site.cfg.history_file = folder.join(".deploy_history");
    site.cfg.rollout.drain = Duration::from_millis(100);
    site.live(Color::Blue, "v1");
    site.set_history(&["v1"]);
    (site, folder)
}

#[tokio::test]
async fn a_history_io_error_after_the_switch_is_transient_and_the_next_pass_records_it() {
    let (site, folder) = site_with_its_history_in_a_folder();
    // During the drain (probe 1 is the gate's) the history's folder becomes a file: the
    // history cannot be read or written at the end (ENOTDIR), an I/O error after the switch
    // as a disk's EIO would be (tests/integration/faults.rs fills a real disk).
    let away = site._dir.path().join("history.away");
    let (from, to) = (folder.clone(), away.clone());
    site.world().at_probe(2, move |_| {
        std::fs::rename(&from, &to).unwrap();
        std::fs::write(&from, "").unwrap();
    });
    let ctx = site.context();
    let desired = site.desired("v2");

    let first = Pass::new(&ctx, Trigger::Cli);
    let e = tokio::time::timeout(Duration::from_secs(20), first.reconcile(&desired))
        .await
        .expect("the pass ends")
        .unwrap_err();
    // As the daemon does after a failed pass.
    let _ = first.record_failure(&desired, &e, &error_policy(&e));

    assert!(e.is_transient(), "{e:?}");
    assert_eq!(site.world().upstream_port(), Some(GREEN));
    assert!(site.world().is_running("api-green"));
    let status = site.status();
    assert_eq!(status.failed_generation, None, "{status:?}");
    assert_eq!(
        status.live.as_ref().map(|l| l.container.as_str()),
        Some("api-green")
    );

    // The disk takes writes again: the next pass records what serves, starting nothing.
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(&away, &folder).unwrap();
    let runs = site.world().calls.len();
    let outcome = pass(&ctx, &desired, CancellationToken::new())
        .await
        .unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    assert_eq!(site.history(), ["v2", "v1"]);
    assert!(!site.world().calls[runs..]
        .iter()
        .any(|c| matches!(c, Call::Run(_))));
    assert_eq!(site.status().phase, crate::state::status::Phase::Converged);
}

/// Found by the simulation (seed 2950 of 20000): a pass by hand retried a failed generation,
/// its image went live, and the history could not be written. The error is transient, but
/// the failed mark of the earlier attempt stayed: every later pass answered AlreadyFailed
/// and the live image never entered the history.
#[tokio::test]
async fn a_failed_generation_retried_by_hand_that_goes_live_is_failed_no_more() {
    let (site, folder) = site_with_its_history_in_a_folder();
    let ctx = site.context();
    let desired = site.desired("v2");
    // The first attempt fails at `nginx -t`: the generation is marked failed.
    site.world().test_failures = 1;
    let first = Pass::new(&ctx, Trigger::Cli);
    let e = first.reconcile(&desired).await.unwrap_err();
    first
        .record_failure(&desired, &e, &error_policy(&e))
        .unwrap();
    assert_eq!(
        site.status().failed_generation,
        Some(desired.generation.clone())
    );

    // By hand, the same generation again; its history is lost in the drain (after the gate's probe).
    let away = site._dir.path().join("history.away");
    let probes = site.world().probes();
    let (from, to) = (folder.clone(), away.clone());
    site.world().at_probe(probes + 2, move |_| {
        std::fs::rename(&from, &to).unwrap();
        std::fs::write(&from, "").unwrap();
    });
    ctx.ask_retry(&desired).unwrap();
    let by_hand = Pass::new(&ctx, Trigger::Cli);
    let e = tokio::time::timeout(Duration::from_secs(20), by_hand.reconcile(&desired))
        .await
        .expect("the pass ends")
        .unwrap_err();
    let _ = by_hand.record_failure(&desired, &e, &error_policy(&e));
    assert!(e.is_transient(), "{e:?}");
    assert_eq!(site.world().upstream_port(), Some(GREEN));
    assert_eq!(
        site.status().failed_generation,
        None,
        "v2 serves: not failed"
    );

    // The disk is back: the next pass (not by hand) records what serves.
    site.world().forget_events();
    std::fs::remove_file(&folder).unwrap();
    std::fs::rename(&away, &folder).unwrap();
    let outcome = pass(&ctx, &desired, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome, PassOutcome::Converged);
    assert_eq!(site.history(), ["v2", "v1"]);
}

// rollout.keep_previous: the previous color kept warm.

const WINDOW: Duration = Duration::from_secs(15 * 60);

impl Site {
    fn status(&self) -> crate::state::status::Status {
        crate::state::status::Status::load(&self.cfg.state_dir.join(crate::state::STATUS_FILE))
            .unwrap()
            .expect("a status")
    }

    fn id_of(&self, name: &str) -> String {
        self.world().container(name).expect("it exists").id.clone()
    }

    /// Rewrites the warm window (in the journal and status.json, as the one writer does) to
    /// end `secs` from now (negative: in the past).
    fn warm_ends_in(&self, secs: i64) {
        let now = std::time::SystemTime::now();
        let until = if secs >= 0 {
            now + Duration::from_secs(secs.unsigned_abs())
        } else {
            now - Duration::from_secs(secs.unsigned_abs())
        };
        let mut status = self.status();
        status.warm.as_mut().expect("a warm window").until =
            humantime::format_rfc3339_seconds(until).to_string();
        crate::state::writer::StatusWriter::private(&self.cfg.state_dir)
            .save(&mut status)
            .unwrap();
    }
}

/// Blue served v1; v2 deployed into green with a 15 min `keep_previous`.
async fn v2_deployed_with_v1_kept_warm() -> Site {
    let mut site = site_with_blue_live();
    site.cfg.rollout.keep_previous = WINDOW;
    site.pass("v2").await.unwrap();
    site
}

#[tokio::test]
async fn with_keep_previous_the_old_color_keeps_running_out_of_nginx_and_is_recorded_warm() {
    let site = v2_deployed_with_v1_kept_warm().await;

    {
        let world = site.world();
        assert!(world.is_running("api-blue"), "v1 still runs");
        assert!(!world.called(&Call::Remove("api-blue".into())));
        assert_eq!(world.upstream_port(), Some(GREEN));
        assert_eq!(world.loaded_port(), Some(GREEN));
    }
    assert_eq!(site.history(), ["v2", "v1"]);
    let status = site.status();
    let warm = status.warm.expect("status.json records the warm color");
    assert_eq!(
        (warm.color, warm.image.as_str(), warm.container.as_str()),
        (Color::Blue, "v1", "api-blue")
    );
    assert_eq!(warm.id, site.id_of("api-blue"));
    let left = warm
        .until_time()
        .unwrap()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(
        left <= WINDOW && left > WINDOW - Duration::from_secs(60),
        "{left:?}"
    );
    // A pass inside the window (a resync, a restarted process) keeps it.
    site.pass("v2").await.unwrap();
    assert!(site.world().is_running("api-blue"));
    assert_eq!(site.status().warm.map(|w| w.id), Some(warm.id));
}

#[tokio::test]
async fn a_rollback_inside_the_window_switches_to_the_same_container_and_keeps_the_other_warm() {
    let site = v2_deployed_with_v1_kept_warm().await;
    let v1_id = site.id_of("api-blue");
    let calls_before = site.world().calls.len();

    site.pass("v1").await.unwrap();

    let world = site.world();
    let calls = &world.calls[calls_before..];
    assert!(
        !calls
            .iter()
            .any(|c| matches!(c, Call::Run(_) | Call::Pull(_))),
        "{calls:?}"
    );
    assert!(
        !calls.iter().any(|c| matches!(c, Call::Remove(_))),
        "{calls:?}"
    );
    assert_eq!(world.loaded_port(), Some(BLUE));
    assert_eq!(world.container("api-blue").unwrap().id, v1_id);
    assert!(world.is_running("api-green"), "v2 is kept warm in its turn");
    drop(world);
    let warm = site.status().warm.expect("v2 recorded warm");
    assert_eq!(
        (warm.container.as_str(), warm.image.as_str()),
        ("api-green", "v2")
    );
    assert_eq!(site.history(), ["v1", "v2"]);
}

#[tokio::test]
async fn after_the_window_the_next_pass_removes_the_warm_color_and_a_rollback_starts_anew() {
    let site = v2_deployed_with_v1_kept_warm().await;
    site.warm_ends_in(-1);

    site.pass("v2").await.unwrap();

    assert!(site.world().container("api-blue").is_none(), "v1 removed");
    assert_eq!(site.status().warm, None, "no window is shown any more");

    let calls_before = site.world().calls.len();
    site.pass("v1").await.unwrap();
    let world = site.world();
    assert!(world.calls[calls_before..].contains(&Call::Run("api-blue".into())));
    assert_eq!(world.loaded_port(), Some(BLUE));
}

#[tokio::test]
async fn a_lost_status_file_removes_the_warm_color_at_the_next_pass() {
    let site = v2_deployed_with_v1_kept_warm().await;
    // The state folder's record of the window lost: the journal and the report.
    std::fs::remove_file(site.cfg.state_dir.join(crate::state::STATUS_FILE)).unwrap();
    std::fs::remove_file(site.cfg.state_dir.join(crate::state::journal::JOURNAL_FILE)).unwrap();

    site.pass("v2").await.unwrap();

    assert!(site.world().container("api-blue").is_none());
    assert!(site.world().is_running("api-green"));
}

#[tokio::test]
async fn a_window_that_runs_is_over_once_keep_previous_is_set_back_to_zero() {
    let mut site = v2_deployed_with_v1_kept_warm().await;
    site.cfg.rollout.keep_previous = Duration::ZERO;

    site.pass("v2").await.unwrap();

    assert!(site.world().container("api-blue").is_none());
    assert_eq!(site.status().warm, None);
}

#[tokio::test]
async fn a_new_image_takes_the_warm_color_and_the_status_stops_naming_it() {
    let site = v2_deployed_with_v1_kept_warm().await;
    let v1_id = site.id_of("api-blue");

    site.pass("v3").await.unwrap();

    let world = site.world();
    assert_ne!(
        world.container("api-blue").unwrap().id,
        v1_id,
        "v3 runs in blue"
    );
    assert_eq!(world.loaded_port(), Some(BLUE));
    drop(world);
    let warm = site.status().warm.expect("v2 kept warm now");
    assert_eq!(
        (warm.container.as_str(), warm.image.as_str()),
        ("api-green", "v2")
    );
}

#[tokio::test]
async fn a_warm_color_failing_its_gate_on_a_rollback_is_removed_and_no_longer_named_warm() {
    // Found by the simulation: status.json went on naming the removed container.
    let site = v2_deployed_with_v1_kept_warm().await;
    site.world().answer(BLUE, ProbeOutcome::Unhealthy(500));

    let e = site.pass("v1").await.unwrap_err();

    assert!(matches!(e, ReconcileError::Unhealthy { .. }), "{e:?}");
    assert!(site.world().container("api-blue").is_none());
    assert_eq!(site.world().loaded_port(), Some(GREEN));
    assert_eq!(site.status().warm, None);
}

// Canary steps: the weighted file and its mark, as a dead process leaves them.

/// Blue serves v1, green runs v2, and a canary step shares the traffic 90/10 with the
/// canary mark in status.json: what a process that died inside a canary leaves behind.
async fn canary_left_behind() -> Site {
    let site = site_with_blue_live();
    site.running(Color::Green, "v2");
    let ctx = site.context();
    let pass = Pass::new(&ctx, Trigger::Cli);
    let at = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    pass.switch_canary(&[(at(BLUE), 90)], &[(at(GREEN), 10)], "canary 10%")
        .await
        .unwrap();
    let text = site.world().upstream.clone().unwrap();
    assert!(
        text.contains("server 127.0.0.1:3001 weight=90;")
            && text.contains("server 127.0.0.1:3002 weight=10;"),
        "{text}"
    );
    let status = crate::state::status::Status::load(&ctx.status_file())
        .unwrap()
        .unwrap();
    assert!(
        status.switching.as_ref().is_some_and(|m| m.canary),
        "{status:?}"
    );
    site
}

#[tokio::test]
async fn a_canary_left_behind_converges_onto_the_canary_through_the_stable_color() {
    let site = canary_left_behind().await;

    let outcome = site.pass("v2").await.unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    let world = site.world();
    assert_eq!(world.loaded_port(), Some(GREEN));
    let text = world.upstream.clone().unwrap();
    assert!(!text.contains("weight="), "{text}");
    // The stable color was reasserted (alone) before the canary's gate and switch, and no
    // container was started: the canary's is reused.
    assert!(!world.called(&Call::Run("api-green".into())));
    drop(world);
    let status = crate::state::status::Status::load(&site.context().status_file())
        .unwrap()
        .unwrap();
    assert_eq!(
        status.switching, None,
        "the mark is gone once one color serves"
    );
}

#[tokio::test]
async fn an_aborted_canary_left_behind_is_removed_after_nginx_is_back_on_the_stable_color() {
    let site = canary_left_behind().await;

    let outcome = site.pass("v1").await.unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    let world = site.world();
    assert_eq!(world.loaded_port(), Some(BLUE));
    assert!(!world.upstream.clone().unwrap().contains("weight="));
    assert!(world.is_running("api-blue"));
    assert!(!world.is_running("api-green"));
    // The reload onto blue alone came before the canary's removal.
    let reload = world
        .calls
        .iter()
        .position(|c| *c == Call::Write(BLUE))
        .expect("blue reasserted");
    let removal = world
        .calls
        .iter()
        .position(|c| *c == Call::Remove("api-green".into()))
        .expect("the canary removed");
    assert!(reload < removal, "{:?}", world.calls);
}

// Canary steps, driven through a whole pass, judged from an access log the test writes.

/// Blue serves v1; `[canary]` with two steps (10% then 50%) of `pause` each, 5 requests
/// needed per step, 1% errors allowed.
fn canary_site(pause: crate::config::Pause) -> Site {
    use crate::config::{CanaryConfig, CanaryStep, Ratio};
    let mut site = site_with_blue_live();
    site.cfg.nginx.access_log = Some(site.cfg.state_dir.join("access.log"));
    site.cfg.canary = Some(CanaryConfig {
        steps: vec![
            CanaryStep { weight: 10, pause },
            CanaryStep { weight: 50, pause },
        ],
        max_error_rate: Ratio(0.01),
        min_requests: 5,
        max_latency_ratio: Ratio(2.0),
    });
    site
}

impl Site {
    /// The canary's share of the traffic in the upstream file, percent.
    fn canary_share(&self) -> Option<u32> {
        let text = self.world().upstream.clone()?;
        let servers: Vec<(u16, u32)> =
            crate::nginx_conf::upstream::parse_weighted(&text, &self.cfg.nginx.upstream_name)
                .into_iter()
                .map(|(a, w)| (a.port(), w))
                .collect();
        crate::plan::canary::canary_share(&servers, GREEN)
    }

    fn access_log(&self) -> std::path::PathBuf {
        self.cfg.nginx.access_log.clone().unwrap()
    }

    fn canary_steps(&self) -> Vec<(String, String)> {
        audit::read(&self.cfg.state_dir.join(crate::state::AUDIT_FILE))
            .unwrap()
            .into_iter()
            .filter(|r| r.event == audit::CANARY_STEP_EVENT)
            .map(|r| (r.outcome.to_string(), r.message.unwrap_or_default()))
            .collect()
    }
}

#[tokio::test]
async fn a_healthy_canary_goes_through_its_steps_then_takes_all_the_traffic() {
    let site = canary_site(crate::config::Pause::For(Duration::from_millis(100)));
    let _traffic = Traffic::start(site.access_log(), (BLUE, GREEN), 200);
    let ctx = site.context();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let pass = Pass::new(&ctx, Trigger::Cli)
        .with_progress(Box::new(move |p| sink.lock().unwrap().push(p)));

    // The command's passes run the canary's passes to its end.
    let outcome = pass
        .reconcile_with_retries(&site.desired("v2"), 1)
        .await
        .unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    let steps: Vec<Progress> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|p| matches!(p, Progress::CanaryStep { .. }))
        .cloned()
        .collect();
    assert_eq!(
        steps,
        [
            Progress::CanaryStep {
                step: 1,
                steps: 2,
                weight: 10
            },
            Progress::CanaryStep {
                step: 2,
                steps: 2,
                weight: 50
            }
        ]
    );
    let world = site.world();
    assert_eq!(world.loaded_port(), Some(GREEN));
    assert!(!world.upstream.clone().unwrap().contains("weight="));
    assert!(!world.is_running("api-blue"));
    drop(world);
    assert_eq!(site.history(), ["v2", "v1"]);
    let recorded = site.canary_steps();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(
        recorded.iter().all(|(o, _)| o == "succeeded"),
        "{recorded:?}"
    );
    assert!(
        recorded[0]
            .1
            .starts_with("canary step 1 of 2 (10%) passed: canary "),
        "{recorded:?}"
    );
    let status = site.status();
    assert_eq!(status.canary, None);
    assert_eq!(status.switching, None);
}

#[tokio::test]
async fn a_canary_answering_5xx_is_stopped_at_step_1_and_the_desired_file_rolled_back() {
    let mut site = canary_site(crate::config::Pause::For(Duration::from_secs(60)));
    site.cfg.rollout.auto_rollback = true;
    let _traffic = Traffic::start(site.access_log(), (BLUE, GREEN), 500);

    let e = site.pass("v2").await.unwrap_err();

    assert!(
        matches!(&e, ReconcileError::FailedAfterSwitch { back_to: Some(c), .. } if c == "blue"),
        "{e:?}"
    );
    let world = site.world();
    assert_eq!(world.loaded_port(), Some(BLUE));
    assert!(!world.upstream.clone().unwrap().contains("weight="));
    assert!(world.is_running("api-blue"));
    assert!(!world.is_running("api-green"));
    drop(world);
    assert_eq!(site.history(), ["v1"]);
    let now = Desired::load(&site.cfg.desired_file, &site.cfg).unwrap();
    assert_eq!(now.image.as_written(), "v1");
    let note = now.note.unwrap_or_default();
    assert!(
        note.contains("v2 failed after the switch: canary step 1 of 2 (10%): the canary answered"),
        "{note}"
    );
    assert_eq!(site.last_audit_outcome(), "rolled_back");
    let recorded = site.canary_steps();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].0, "rolled_back");
    assert_eq!(site.status().canary, None);
}

#[tokio::test]
async fn a_canary_whose_probes_fail_is_stopped_though_the_log_is_clean() {
    let site = canary_site(crate::config::Pause::For(Duration::from_secs(60)));
    let _traffic = Traffic::start(site.access_log(), (BLUE, GREEN), 200);
    // The gate's probe passes, then the canary stops answering its health check.
    site.world().script(
        GREEN,
        [
            ProbeOutcome::Healthy(200),
            ProbeOutcome::Unhealthy(500),
            ProbeOutcome::Unhealthy(500),
            ProbeOutcome::Unhealthy(500),
        ],
    );

    let e = site.pass("v2").await.unwrap_err();

    let message = e.to_string();
    assert!(
        message.contains("3 failed health probes in a row"),
        "{message}"
    );
    let world = site.world();
    assert_eq!(world.loaded_port(), Some(BLUE));
    assert!(!world.is_running("api-green"));
}

#[tokio::test]
async fn a_new_desired_generation_mid_canary_sends_everything_back_to_the_stable_color() {
    let site = canary_site(crate::config::Pause::Manual);
    let _traffic = Traffic::start(site.access_log(), (BLUE, GREEN), 200);
    let ctx = site.context();
    let v2 = site.desired("v2");
    let outcome = one_pass(&ctx, &v2).await.unwrap();
    assert!(
        matches!(outcome, PassOutcome::Canary { step: 1, .. }),
        "{outcome:?}"
    );
    let v2_id = site.id_of("api-green");
    let before = site.world().calls.len();

    // Someone writes another desired state: its pass calls v2's canary off first.
    let outcome = one_pass(&ctx, &site.desired("v3")).await.unwrap();

    assert!(
        matches!(outcome, PassOutcome::Canary { step: 1, .. }),
        "v3 runs its own canary: {outcome:?}"
    );
    let world = site.world();
    let calls = &world.calls[before..];
    let blue_alone = calls
        .iter()
        .position(|c| *c == Call::Write(BLUE))
        .expect("nginx back on blue alone");
    let removed = calls
        .iter()
        .position(|c| *c == Call::Remove("api-green".into()))
        .expect("v2's canary removed");
    assert!(blue_alone < removed, "{calls:?}");
    drop(world);
    assert_ne!(
        site.id_of("api-green"),
        v2_id,
        "v3 in a new green container"
    );
    assert_eq!(site.history(), ["v1"]);
    let journal = site.journal();
    assert_eq!(
        journal.canary.map(|m| (m.image, m.step)),
        Some(("v3".to_string(), 1))
    );
    let cancelled = audit::read(&site.cfg.state_dir.join(crate::state::AUDIT_FILE))
        .unwrap()
        .into_iter()
        .find(|r| r.image == "v2" && r.outcome == AttemptOutcome::Cancelled)
        .expect("v2's deployment recorded as cancelled");
    assert_eq!(
        cancelled.reference,
        format!("{REPO}:v2"),
        "the full reference"
    );
    assert!(cancelled
        .message
        .unwrap_or_default()
        .contains("called off at step 1"),);
}

#[tokio::test]
async fn a_manual_step_waits_for_promote_and_the_last_promote_switches_to_the_canary() {
    let site = canary_site(crate::config::Pause::Manual);
    let _traffic = Traffic::start(site.access_log(), (BLUE, GREEN), 200);
    let ctx = site.context();
    let desired = site.desired("v2");
    let generation = desired.generation.clone();
    let promote = crate::desired::promote::request_path(&site.cfg.desired_file);
    let status_file = ctx.status_file();
    let operator = tokio::spawn(async move {
        // Promote each step once it runs (a promote left from another generation is ignored).
        let ask = |generation: &str, step| {
            crate::desired::promote::PromoteRequest {
                generation: generation.to_string(),
                step,
            }
            .write(&promote)
            .unwrap()
        };
        ask("another-generation", 1);
        for step in 1..=2 {
            loop {
                let status = crate::state::status::Status::load(&status_file)
                    .ok()
                    .flatten();
                if status.is_some_and(|s| s.canary.is_some_and(|c| c.step == step)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            ask(&generation, step);
        }
    });

    let outcome = pass(&ctx, &desired, CancellationToken::new())
        .await
        .unwrap();
    operator.await.unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    assert_eq!(site.world().loaded_port(), Some(GREEN));
    assert_eq!(site.canary_steps().len(), 2);
}

/// A promote sent as step 1 ends by itself reaches the loop during step 2, a manual one: it
/// names step 1, so step 2 goes on (before, a request named only the generation and ended
/// whatever step ran).
#[tokio::test]
async fn a_promote_for_a_step_that_ended_by_itself_does_not_pass_the_next_manual_step() {
    use crate::config::Pause;
    let mut site = canary_site(Pause::Manual);
    if let Some(canary) = site.cfg.canary.as_mut() {
        canary.steps[0].pause = Pause::For(Duration::from_millis(50));
    }
    let _traffic = Traffic::start(site.access_log(), (BLUE, GREEN), 200);
    let ctx = site.context();
    let desired = site.desired("v2");
    let generation = desired.generation.clone();
    let promote = crate::desired::promote::request_path(&site.cfg.desired_file);
    let status_file = ctx.status_file();
    let operator = tokio::spawn(async move {
        let step_now = || {
            crate::state::status::Status::load(&status_file)
                .ok()
                .flatten()
                .and_then(|s| s.canary.map(|c| c.step))
        };
        let ask = |step| {
            crate::desired::promote::PromoteRequest {
                generation: generation.clone(),
                step,
            }
            .write(&promote)
            .unwrap()
        };
        while step_now() != Some(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        ask(1);
        while promote.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Taken and dropped: several ticks later step 2 still runs.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let still = step_now();
        ask(2);
        still
    });

    let outcome = pass(&ctx, &desired, CancellationToken::new())
        .await
        .unwrap();
    let step_after_the_stale_promote = operator.await.unwrap();

    assert_eq!(step_after_the_stale_promote, Some(2));
    assert_eq!(outcome, PassOutcome::Converged);
    assert_eq!(site.world().loaded_port(), Some(GREEN));
}

#[tokio::test]
async fn a_rollback_goes_back_at_once_without_canary_steps() {
    let site = canary_site(crate::config::Pause::Manual);
    site.set_history(&["v1", "v0"]);
    let text = "image = \"v0\"\nnote = \"rollback from v1 to v0\"\n";
    std::fs::write(&site.cfg.desired_file, text).unwrap();
    let desired = Desired::parse(text, &site.cfg.desired_file, &site.cfg).unwrap();

    let outcome = pass(&site.context(), &desired, CancellationToken::new())
        .await
        .unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    assert_eq!(site.world().loaded_port(), Some(GREEN));
    assert!(site.canary_steps().is_empty());
}

#[tokio::test]
async fn a_canary_left_behind_by_a_dead_process_runs_its_steps_again_from_step_1() {
    let mut site = canary_left_behind().await;
    let configured = canary_site(crate::config::Pause::For(Duration::from_millis(50)));
    site.cfg.canary = configured.cfg.canary.clone();
    site.cfg.nginx.access_log = Some(site.cfg.state_dir.join("access.log"));
    let _traffic = Traffic::start(site.access_log(), (BLUE, GREEN), 200);

    let outcome = site.pass("v2").await.unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    assert_eq!(site.world().loaded_port(), Some(GREEN));
    // Back on the stable color alone first, then both steps judged anew.
    let recorded = site.canary_steps();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(
        recorded[0].1.starts_with("canary step 1 of 2"),
        "{recorded:?}"
    );
}

/// A canary of v2 whose step 1 (30 ms) passed and whose step 2 (an hour) has begun, by a
/// process gone since; the traffic that feeds its window.
async fn canary_site_at_step_2() -> (Site, Traffic) {
    use crate::config::Pause;
    let mut site = canary_site(Pause::For(Duration::from_secs(3600)));
    if let Some(canary) = site.cfg.canary.as_mut() {
        canary.steps[0].pause = Pause::For(Duration::from_millis(30));
    }
    let traffic = Traffic::start(site.access_log(), (BLUE, GREEN), 200);
    let desired = site.desired("v2");
    let ctx = site.context();
    let mut outcome = one_pass(&ctx, &desired).await.unwrap();
    while !matches!(outcome, PassOutcome::Canary { step: 2, .. }) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        outcome = one_pass(&ctx, &desired).await.unwrap();
    }
    (site, traffic)
}

/// A process that dies inside step 2 leaves the journal's mark: the next process goes on
/// with step 2 from when it began, never step 1 again, and nginx stays on step 2's weights.
#[tokio::test]
async fn a_process_killed_inside_step_2_resumes_step_2_with_the_time_spent_in_it() {
    let (site, _traffic) = canary_site_at_step_2().await;
    let desired = site.desired("v2");
    let began = site.journal().canary.expect("the mark").step_started;

    // A new process: its first pass and the ones after stay in step 2.
    let fresh = site.context();
    for _ in 0..5 {
        let outcome = one_pass(&fresh, &desired).await.unwrap();
        assert!(
            matches!(outcome, PassOutcome::Canary { step: 2, .. }),
            "{outcome:?}"
        );
    }
    let mark = site.journal().canary.expect("the mark");
    assert_eq!((mark.step, mark.step_started.as_str()), (2, began.as_str()));
    let status = site.status().canary.expect("status shows the step");
    assert_eq!((status.step, status.step_started), (2, began));
    assert_eq!(site.canary_share(), Some(50), "step 2's weights");
    assert_eq!(site.canary_steps().len(), 1, "step 1 passed once");

    // Its hour spent (the journal says when it began), step 2 passes and the canary takes
    // every request.
    let mut journal = site.journal();
    if let Some(mark) = journal.canary.as_mut() {
        mark.step_started = humantime::format_rfc3339_millis(
            std::time::SystemTime::now() - Duration::from_secs(3601),
        )
        .to_string();
    }
    journal.save(&site.cfg.state_dir).unwrap();
    let outcome = pass(&fresh, &desired, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome, PassOutcome::Converged);
    assert_eq!(site.world().loaded_port(), Some(GREEN));
    assert_eq!(site.history(), ["v2", "v1"]);
    let steps = site.canary_steps();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        steps[1].1.starts_with("canary step 2 of 2 (50%) passed"),
        "{steps:?}"
    );
    assert_eq!(site.journal().canary, None);
}

/// The journal says step 2 but nginx runs step 1's weights (a process died between the two
/// writes): the step's weights are put back and the step goes on, it does not begin again.
#[tokio::test]
async fn weights_the_journal_does_not_explain_are_put_back_to_its_step() {
    let (site, _traffic) = canary_site_at_step_2().await;
    let desired = site.desired("v2");
    let began = site.journal().canary.unwrap().step_started;
    let at = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let step_1 = crate::nginx_conf::upstream::render_weighted(
        &site.cfg.nginx.upstream_name,
        &[(at(BLUE), 90), (at(GREEN), 10)],
        "canary 10%",
        0,
    );
    site.world().upstream = Some(step_1);

    let outcome = one_pass(&site.context(), &desired).await.unwrap();

    assert!(
        matches!(outcome, PassOutcome::Canary { step: 2, .. }),
        "{outcome:?}"
    );
    assert_eq!(site.canary_share(), Some(50));
    assert_eq!(site.journal().canary.unwrap().step_started, began);
}

/// An engine that does not answer once inside a step is a transient error of that pass, no
/// verdict on the canary: nginx stays on the step's weights (the journal says why), and the
/// next pass goes on with the step.
#[tokio::test]
async fn an_engine_error_inside_a_step_keeps_the_step_and_the_next_pass_goes_on_with_it() {
    let site = canary_site(crate::config::Pause::Manual);
    let _traffic = Traffic::start(site.access_log(), (BLUE, GREEN), 200);
    let ctx = site.context();
    let desired = site.desired("v2");
    let outcome = one_pass(&ctx, &desired).await.unwrap();
    assert!(
        matches!(outcome, PassOutcome::Canary { step: 1, .. }),
        "{outcome:?}"
    );
    assert_eq!(site.canary_share(), Some(10));
    site.world().engine_errors = 1;

    let e = one_pass(&ctx, &desired).await.unwrap_err();

    assert!(e.is_transient(), "{e:?}");
    {
        let world = site.world();
        assert!(world.upstream.clone().unwrap().contains("weight="));
        assert!(world.is_running("api-green"));
    }
    assert_eq!(site.journal().canary.map(|m| m.step), Some(1));
    let outcome = one_pass(&ctx, &desired).await.unwrap();
    assert!(
        matches!(outcome, PassOutcome::Canary { step: 1, .. }),
        "{outcome:?}"
    );
}

// Upgrades: the state folders release 0.1.0 left (tests/fixtures/state-0.1.0, where the
// switch mark, the warm window and the failed generation lived in status.json, before the
// journal) are read and acted on as that release did.

impl Site {
    /// The state folder `name` of release 0.1.0 in place of this site's, with `WARM_ID`
    /// standing for the engine id of the container it names, and its window (until 2099)
    /// ending 10 minutes from now: within `keep_previous`, as the release wrote it.
    fn state_of_0_1_0(&self, name: &str, warm_id: Option<&str>) {
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/state-0.1.0")
            .join(name);
        let _ = std::fs::remove_file(self.cfg.state_dir.join(crate::state::journal::JOURNAL_FILE));
        let status = std::fs::read_to_string(from.join("status.json")).unwrap();
        let until = std::time::SystemTime::now() + Duration::from_secs(600);
        let status = status
            .replace("WARM_ID", warm_id.unwrap_or("WARM_ID"))
            .replace(
                "2099-01-01T00:00:00Z",
                &humantime::format_rfc3339_seconds(until).to_string(),
            );
        std::fs::write(self.cfg.state_dir.join(crate::state::STATUS_FILE), status).unwrap();
        let desired = std::fs::read_to_string(from.join("desired.toml")).unwrap();
        assert_eq!(
            desired, "image = \"v2\"\n",
            "the fixtures' generation is v2's"
        );
    }

    fn journal(&self) -> crate::state::journal::Journal {
        crate::state::journal::Journal::load(&self.cfg.state_dir).unwrap()
    }
}

#[tokio::test]
async fn after_an_upgrade_a_generation_that_failed_under_0_1_0_waits_until_retried_by_hand() {
    let site = site_with_blue_live();
    site.state_of_0_1_0("failed-generation", None);

    let outcome = site.pass("v2").await.unwrap();

    assert!(
        matches!(outcome, PassOutcome::AlreadyFailed { .. }),
        "{outcome:?}"
    );
    assert!(!site.world().called(&Call::Run("api-green".into())));
    assert_eq!(
        site.journal().failed_generation.as_deref(),
        Some(site.desired("v2").generation.as_str()),
        "the journal takes the mark over"
    );

    let ctx = site.context();
    ctx.ask_retry(&site.desired("v2")).unwrap();
    pass(&ctx, &site.desired("v2"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(site.world().loaded_port(), Some(GREEN));
    let journal = site.journal();
    assert_eq!(
        (journal.failed_generation, journal.retry_asked),
        (None, None)
    );
}

#[tokio::test]
async fn after_an_upgrade_a_switch_mark_left_by_0_1_0_is_settled_and_cleared() {
    let site = site_with_blue_live();
    site.running(Color::Green, "v2");
    site.state_of_0_1_0("switch-mark", None);

    let outcome = site.pass("v2").await.unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    assert_eq!(site.world().loaded_port(), Some(GREEN));
    assert_eq!(site.journal().switching, None);
    assert_eq!(site.status().switching, None);
}

#[tokio::test]
async fn after_an_upgrade_the_warm_window_0_1_0_recorded_keeps_its_container() {
    let site = Site::new();
    site.running(Color::Blue, "v1");
    site.live(Color::Green, "v2");
    site.set_history(&["v2", "v1"]);
    let mut site = site;
    site.cfg.rollout.keep_previous = WINDOW;
    site.state_of_0_1_0("warm-window", Some(&site.id_of("api-blue")));

    site.pass("v2").await.unwrap();
    assert!(
        site.world().is_running("api-blue"),
        "kept warm, as 0.1.0 did"
    );
    assert_eq!(site.journal().warm.map(|w| w.color), Some(Color::Blue));

    // The warm color is a pure nginx switch away, as 0.1.0 promised.
    let calls_before = site.world().calls.len();
    site.pass("v1").await.unwrap();
    let world = site.world();
    assert_eq!(world.loaded_port(), Some(BLUE));
    assert!(!world.calls[calls_before..].contains(&Call::Run("api-blue".into())));
}

#[tokio::test]
async fn after_an_upgrade_a_canary_mark_left_by_0_1_0_converges_onto_the_canary_through_the_stable_color(
) {
    let site = canary_left_behind().await;
    site.state_of_0_1_0("canary-mark", None);

    let outcome = site.pass("v2").await.unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    let world = site.world();
    assert_eq!(world.loaded_port(), Some(GREEN));
    assert!(!world.upstream.clone().unwrap().contains("weight="));
    assert!(!world.called(&Call::Run("api-green".into())));
    drop(world);
    assert_eq!(site.journal().switching, None);
}

#[tokio::test]
async fn a_settings_change_deploys_the_same_image_to_the_other_color_and_switches() {
    let mut site = site_with_blue_live();
    // Blue was started before settings existed (no label): no settings is no drift.
    site.pass("v1").await.unwrap();
    assert!(!site
        .world()
        .calls
        .iter()
        .any(|c| matches!(c, Call::Run(_) | Call::Remove(_))));

    site.cfg.container.settings.memory = Some(64 << 20);
    site.pass("v1").await.unwrap();

    let runs = {
        let world = site.world();
        assert!(world.called(&Call::Run("api-green".into())));
        assert!(
            !world.called(&Call::Pull(format!("{REPO}:v1"))),
            "the image is local"
        );
        assert_eq!(world.loaded_port(), Some(GREEN));
        assert!(world.container("api-blue").is_none());
        let green = world.container("api-green").expect("green runs");
        assert_eq!(green.labels[LABEL_IMAGE], format!("{REPO}:v1"));
        assert_eq!(
            green.labels[LABEL_SETTINGS],
            site.cfg.container.settings.to_label()
        );
        world.calls.len()
    };
    assert_eq!(site.history(), ["v1"]);

    // The new settings are in force: the next pass changes nothing.
    site.pass("v1").await.unwrap();
    let world = site.world();
    assert!(!world.calls[runs..]
        .iter()
        .any(|c| matches!(c, Call::Run(_) | Call::Remove(_) | Call::Write(_))));
    assert_eq!(world.loaded_port(), Some(GREEN));
}

#[tokio::test]
async fn the_idle_color_running_the_image_with_other_settings_is_replaced_not_switched_to() {
    let mut site = site_with_blue_live();
    site.running(Color::Green, "v2");
    site.cfg.container.settings.init = true;

    site.pass("v2").await.unwrap();

    let world = site.world();
    assert!(world.called(&Call::Remove("api-green".into())));
    assert!(world.called(&Call::Run("api-green".into())));
    assert_eq!(world.loaded_port(), Some(GREEN));
    let green = world.container("api-green").expect("green runs");
    assert_eq!(
        green.labels[LABEL_SETTINGS],
        site.cfg.container.settings.to_label()
    );
}

#[tokio::test]
async fn a_settings_change_failing_after_the_switch_goes_back_and_leaves_the_desired_file_alone() {
    let mut site = site_with_blue_live();
    site.cfg.rollout.drain = LONG_DRAIN;
    site.cfg.rollout.auto_rollback = true;
    site.cfg.container.settings.memory = Some(64 << 20);
    site.world().script(
        GREEN,
        [
            ProbeOutcome::Healthy(200),
            ProbeOutcome::Unhealthy(500),
            ProbeOutcome::Unhealthy(500),
            ProbeOutcome::Unhealthy(500),
        ],
    );

    let e = site.pass("v1").await.unwrap_err();

    // Traffic is back on blue; the desired file already names what blue runs, and writing
    // it again (a new generation) would only deploy the same settings once more.
    assert!(
        matches!(
            e,
            ReconcileError::FailedAfterSwitch {
                back_to: Some(_),
                rolled_back_to: None,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&site.cfg.desired_file).unwrap(),
        "image = \"v1\"\n"
    );
    assert_eq!(site.world().loaded_port(), Some(BLUE));
    assert_eq!(site.history(), ["v1"]);
}

// A preview (`rollout.promotion = "manual"`): blue serves v1, v2 awaits promotion in green
// behind the upstream file's preview block.

/// Blue serves v1 (history v1), promotion is manual.
fn preview_site() -> Site {
    let mut site = site_with_blue_live();
    site.cfg.rollout.promotion = crate::config::Promotion::Manual;
    site.world().preview = true;
    site
}

impl Site {
    /// The ports of the preview block in the config nginx runs.
    fn loaded_preview_ports(&self) -> Vec<u16> {
        let name = crate::nginx_conf::upstream::preview_name(&self.cfg.nginx.upstream_name);
        self.world()
            .loaded
            .as_deref()
            .map(|t| crate::nginx_conf::upstream::parse_ports(t, &name))
            .unwrap_or_default()
    }

    /// The ports of production's block in the config nginx runs.
    fn loaded_ports(&self) -> Vec<u16> {
        self.world()
            .loaded
            .as_deref()
            .map(|t| crate::nginx_conf::upstream::parse_ports(t, &self.cfg.nginx.upstream_name))
            .unwrap_or_default()
    }

    /// `fieldtrack promote` for the preview of `desired`.
    fn ask_promote(&self, desired: &Desired) {
        crate::desired::promote::PromoteRequest {
            generation: desired.generation.clone(),
            step: crate::plan::preview::PREVIEW_STEP,
        }
        .write(&crate::desired::promote::request_path(
            &self.cfg.desired_file,
        ))
        .unwrap();
    }

    fn audit_outcomes(&self) -> Vec<(String, String)> {
        audit::read(&self.cfg.state_dir.join(crate::state::AUDIT_FILE))
            .unwrap()
            .into_iter()
            .map(|r| (r.image, r.outcome.to_string()))
            .collect()
    }
}

/// The preview of v2 is up: production (blue, v1) untouched, the preview block on green.
async fn preview_of_v2(site: &Site, ctx: &FakeContext) -> Desired {
    let desired = site.desired("v2");
    let outcome = one_pass(ctx, &desired).await.unwrap();
    assert!(
        matches!(outcome, PassOutcome::Preview { .. }),
        "{outcome:?}"
    );
    assert_eq!(site.loaded_ports(), [BLUE]);
    assert_eq!(site.loaded_preview_ports(), [GREEN]);
    assert!(site.world().is_running("api-green"));
    desired
}

#[tokio::test]
async fn a_manual_promotion_previews_the_new_image_and_switches_only_on_promote() {
    let site = preview_site();
    let ctx = site.context();
    let desired = preview_of_v2(&site, &ctx).await;
    let mark = site.journal().preview.expect("the preview's mark");
    assert_eq!((mark.color, mark.stable), (Color::Green, Color::Blue));

    for _ in 0..5 {
        let outcome = one_pass(&ctx, &desired).await.unwrap();
        assert!(
            matches!(outcome, PassOutcome::Preview { .. }),
            "{outcome:?}"
        );
    }
    assert_eq!(
        site.loaded_ports(),
        [BLUE],
        "production moved without a promote"
    );
    assert!(!site.world().served.contains(&"v2".to_string()));
    assert_eq!(site.history(), ["v1"]);
    let status = crate::state::status::Status::load(&ctx.status_file())
        .unwrap()
        .unwrap();
    assert_eq!(status.step, Some(Step::Preview));
    assert_eq!(
        status.preview.map(|p| p.upstream),
        Some("fieldtrack_api_preview".to_string())
    );

    site.ask_promote(&desired);
    let outcome = one_pass(&ctx, &desired).await.unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    assert_eq!(site.loaded_ports(), [GREEN]);
    assert_eq!(site.loaded_preview_ports(), [GREEN]);
    assert!(!site.world().is_running("api-blue"));
    assert_eq!(site.history(), ["v2", "v1"]);
    assert_eq!(site.last_audit_outcome(), "succeeded");
    assert_eq!(site.journal().preview, None);
    assert!(!crate::desired::promote::request_path(&site.cfg.desired_file).exists());
}

#[tokio::test]
async fn a_process_killed_as_the_preview_opens_resumes_it_on_the_next_pass() {
    let site = preview_site();
    let desired = site.desired("v2");
    let killed = site.world().kill_at_next_write();
    let ctx = site.context();
    tokio::select! {
        outcome = one_pass(&ctx, &desired) => panic!("the process lived: {outcome:?}"),
        _ = killed.notified() => {}
    }
    // The file names the preview, nginx does not run it yet.
    assert_eq!(site.loaded_preview_ports(), Vec::<u16>::new());
    site.world().revive();

    let outcome = one_pass(&site.context(), &desired).await.unwrap();

    assert!(
        matches!(outcome, PassOutcome::Preview { .. }),
        "{outcome:?}"
    );
    assert_eq!(site.loaded_ports(), [BLUE]);
    assert_eq!(site.loaded_preview_ports(), [GREEN]);
    assert!(!site.world().served.contains(&"v2".to_string()));
}

#[tokio::test]
async fn an_abort_removes_the_preview_and_puts_the_preview_block_back_on_production() {
    let site = preview_site();
    let ctx = site.context();
    preview_of_v2(&site, &ctx).await;

    let outcome = one_pass(&ctx, &site.desired("v1")).await.unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    assert!(!site.world().is_running("api-green"));
    assert_eq!(site.loaded_ports(), [BLUE]);
    assert_eq!(site.loaded_preview_ports(), [BLUE]);
    assert_eq!(site.history(), ["v1"]);
    assert!(
        site.audit_outcomes()
            .contains(&("v2".to_string(), "cancelled".to_string())),
        "{:?}",
        site.audit_outcomes()
    );
    assert_eq!(site.journal().preview, None);
}

#[tokio::test]
async fn a_newer_generation_replaces_the_preview() {
    let site = preview_site();
    let ctx = site.context();
    preview_of_v2(&site, &ctx).await;
    let v3 = site.desired("v3");

    let outcome = one_pass(&ctx, &v3).await.unwrap();

    assert!(
        matches!(outcome, PassOutcome::Preview { .. }),
        "{outcome:?}"
    );
    let mark = site.journal().preview.expect("v3's preview");
    assert_eq!(
        (mark.image.as_str(), mark.generation),
        ("v3", v3.generation)
    );
    assert_eq!(site.loaded_ports(), [BLUE]);
    assert_eq!(site.loaded_preview_ports(), [GREEN]);
    assert!(site
        .audit_outcomes()
        .contains(&("v2".to_string(), "cancelled".to_string())));
}

#[tokio::test]
async fn three_failed_probes_of_the_previewed_candidate_end_it_as_a_failed_deployment() {
    let site = preview_site();
    let ctx = site.context();
    let desired = preview_of_v2(&site, &ctx).await;
    site.world().answer(GREEN, ProbeOutcome::Unhealthy(500));

    let mut passes = 0;
    let e = loop {
        passes += 1;
        assert!(passes <= 4, "the preview outlived its failed probes");
        match one_pass(&ctx, &desired).await {
            Ok(PassOutcome::Preview { .. }) => continue,
            Ok(other) => panic!("{other:?}"),
            Err(e) => break e,
        }
    };

    assert!(matches!(e, ReconcileError::PreviewFailed { .. }), "{e:?}");
    assert!(error_policy(&e).mark_failed);
    assert!(!site.world().is_running("api-green"));
    assert_eq!(site.loaded_ports(), [BLUE]);
    assert_eq!(site.loaded_preview_ports(), [BLUE]);
    assert_eq!(site.history(), ["v1"]);
    assert_eq!(site.last_audit_outcome(), "failed");
    assert_eq!(site.journal().preview, None);
}

#[tokio::test]
async fn with_manual_promotion_an_image_the_history_names_goes_back_at_once() {
    let site = preview_site();
    site.set_history(&["v1", "v0"]);

    let outcome = site.pass("v0").await.unwrap();

    assert_eq!(outcome, PassOutcome::Converged);
    assert_eq!(site.loaded_ports(), [GREEN]);
    assert_eq!(site.loaded_preview_ports(), [GREEN]);
}
