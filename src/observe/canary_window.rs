//! The running canary step's window: what real traffic got from each side since this process
//! began watching the step, read from nginx's access log as it grows, and the canary's health
//! probes that failed in a row. The one part of a canary kept in memory between passes: a
//! process that starts again watches the step afresh, its counts from zero (the step itself,
//! and the time spent in it, are in the journal).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use super::access_log::{tally, Figures, Tail};
use super::CanaryWindow;
use crate::config::{Config, RuntimeKind};
use crate::state::status::CanaryMark;

/// The two sides of a canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    Stable,
    Canary,
}

/// One step's watch.
#[derive(Debug)]
struct Watch {
    generation: String,
    step: usize,
    tail: Tail,
    figures: HashMap<Side, Figures>,
    probe_failures: u32,
    last_probe: Option<String>,
}

/// The watch of the running step, shared by a context's passes.
#[derive(Debug, Default)]
pub struct Watcher(Mutex<Option<Watch>>);

impl Watcher {
    /// Begins watching `mark`'s step from the log's end now: what nginx logged before is not
    /// this step's.
    pub fn begin(&self, cfg: &Config, mark: &CanaryMark) {
        let Some(log) = &cfg.nginx.access_log else {
            return;
        };
        *self.lock() = Some(Watch {
            generation: mark.generation.clone(),
            step: mark.step,
            tail: Tail::from_end(log),
            figures: HashMap::new(),
            probe_failures: 0,
            last_probe: None,
        });
    }

    /// The window of `mark`'s step, with what the log gained since the last look; a step not
    /// watched yet (another one was, or none: a process that just started) begins now.
    pub fn window(&self, cfg: &Config, mark: &CanaryMark) -> CanaryWindow {
        let watching = |w: &Option<Watch>| {
            w.as_ref()
                .is_some_and(|w| w.generation == mark.generation && w.step == mark.step)
        };
        if !watching(&self.lock()) {
            self.begin(cfg, mark);
        }
        let mut guard = self.lock();
        let Some(watch) = guard.as_mut() else {
            return CanaryWindow::default();
        };
        let swarm = cfg.runtime == RuntimeKind::Swarm;
        let (stable_port, canary_port) = (cfg.port(mark.stable), cfg.port(mark.color));
        // On one engine the colors are on loopback; on Swarm on the nodes, told by port.
        let side_of = |a: SocketAddr| match a.port() {
            _ if !swarm && !a.ip().is_loopback() => None,
            p if p == stable_port => Some(Side::Stable),
            p if p == canary_port => Some(Side::Canary),
            _ => None,
        };
        match watch.tail.read_new() {
            Ok(requests) => tally(&mut watch.figures, &requests, side_of),
            Err(e) => tracing::warn!(error = %e, "cannot read the access log this time"),
        }
        let get = |side| watch.figures.get(&side).cloned().unwrap_or_default();
        CanaryWindow {
            generation: watch.generation.clone(),
            step: watch.step,
            stable: get(Side::Stable),
            canary: get(Side::Canary),
            probe_failures: watch.probe_failures,
            last_probe: watch.last_probe.clone(),
        }
    }

    /// Counts the canary's probe of this pass for `mark`'s step: `failed` is None when it
    /// answered healthy (the count starts again), else the outcome in plain words.
    pub fn probed(&self, mark: &CanaryMark, failed: Option<String>) -> u32 {
        let mut guard = self.lock();
        let Some(watch) = guard
            .as_mut()
            .filter(|w| w.generation == mark.generation && w.step == mark.step)
        else {
            return 0;
        };
        match failed {
            None => watch.probe_failures = 0,
            Some(outcome) => {
                watch.probe_failures += 1;
                watch.last_probe = Some(outcome);
            }
        }
        watch.probe_failures
    }

    /// No canary is watched any more.
    pub fn forget(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Watch>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
