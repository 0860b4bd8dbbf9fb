//! Progress on stderr, one way for every command that waits for a pass: `deploy`,
//! `rollback` and `reconcile`, whether the pass runs in this process (it emits
//! [`Progress`] events) or in a daemon (its status.json changes are turned into the same
//! events by [`Follower`]).
//!
//! On a terminal the step under way is a spinner line redrawn in place, and each step leaves
//! a line when the next begins; anywhere else (CI logs, journald, a pipe) every step is one
//! plain line, without escape codes. The last line says how it ended. A failure's reason
//! (with the candidate's last log lines) is the command's error, printed once by `main`.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::terminal::printable;
use crate::reconcile::{Progress, ProgressSink};
use crate::state::status::{Live, Phase, PreviewProgress, Status, Step};

/// How a wait for a pass ended, for its last line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// `image` is live (as `live` says, when something is).
    Converged { image: String, live: Option<Live> },
    /// The desired file says `paused = true`.
    Paused,
    /// A preview awaits `fieldtrack promote` (`rollout.promotion = "manual"`).
    Preview(PreviewProgress),
    /// The pass failed; the error says why.
    Failed,
}

/// The last line of a deploy whose preview is up: where it is, and the two ways on.
pub(crate) fn preview_end(p: &PreviewProgress) -> String {
    format!(
        "preview: {} on {} ({}) awaits promotion, reachable through upstream {}; production stays on {}.\n  \
         promote: fieldtrack promote    abort: fieldtrack abort",
        p.image, p.color, p.container, p.upstream, p.stable_color
    )
}

/// Turns progress into lines on `out`: a spinner on a `terminal`, plain lines otherwise.
pub(crate) struct Renderer<W> {
    out: W,
    terminal: bool,
    /// At most this many characters in the spinner line, which must not wrap.
    width: usize,
    /// The line of the step under way (on a terminal, the one under the spinner).
    current: Option<String>,
    step: Option<Step>,
    frame: usize,
    ended: bool,
}

/// The spinner's frames.
const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
/// Erases the line the cursor is on and returns to its start.
const CLEAR: &str = "\r\x1b[2K";

impl<W: Write> Renderer<W> {
    pub(crate) fn new(out: W, terminal: bool, width: usize) -> Self {
        Renderer {
            out,
            terminal,
            width: width.max(20),
            current: None,
            step: None,
            frame: 0,
            ended: false,
        }
    }

    pub(crate) fn event(&mut self, progress: &Progress) {
        if self.ended {
            return;
        }
        match progress {
            Progress::Step(step) => {
                self.step = Some(*step);
                self.begin(format!("progressing: {step}"));
            }
            Progress::Health {
                probes,
                passed: false,
            } => self.update(format!("progressing: health (probe {probes})"), false),
            Progress::Health {
                probes,
                passed: true,
            } => self.update(format!("progressing: health passed (probe {probes})"), true),
            Progress::Switched { color, port } => self.update(
                format!("progressing: switched to {color} (127.0.0.1:{port})"),
                true,
            ),
            Progress::CanaryStep {
                step,
                steps,
                weight,
            } => self.begin(format!(
                "progressing: canary step {step} of {steps}, {weight}% of the traffic"
            )),
        }
    }

    /// Moves the spinner on (a terminal only).
    pub(crate) fn tick(&mut self) {
        if self.terminal && !self.ended && self.current.is_some() {
            self.frame = self.frame.wrapping_add(1);
            self.draw();
        }
    }

    /// The last line. A failure with nothing shown before it adds nothing: the error says it.
    pub(crate) fn end(&mut self, end: &End) {
        if self.ended {
            return;
        }
        let line = match end {
            End::Converged {
                image,
                live: Some(live),
            } => Some(format!(
                "converged: {image} live on {} ({}, 127.0.0.1:{})",
                live.color, live.container, live.port
            )),
            End::Converged { image, live: None } => Some(format!("converged: {image}")),
            End::Paused => {
                Some("paused: the desired file says paused = true; nothing was changed".into())
            }
            End::Preview(p) => Some(preview_end(p)),
            End::Failed => match (self.step, &self.current) {
                (Some(step), _) => Some(format!("failed at {step}")),
                (None, Some(_)) => Some("failed".into()),
                (None, None) => None,
            },
        };
        self.stop(line);
    }

    /// Leaves the step lines as they are (the wait was given up, or the pass superseded).
    pub(crate) fn abandon(&mut self) {
        if !self.ended {
            self.stop(None);
        }
    }

    fn stop(&mut self, last: Option<String>) {
        self.ended = true;
        let mut text = String::new();
        if self.terminal {
            if let Some(current) = self.current.take() {
                text.push_str(&format!("{CLEAR}  {current}\n"));
            }
        }
        if let Some(last) = last {
            text.push_str(&format!("{}\n", printable(&last)));
        }
        self.write(&text);
    }

    /// A new step: the one before keeps its line.
    fn begin(&mut self, line: String) {
        let line = printable(&line);
        if self.terminal {
            if let Some(previous) = self.current.take() {
                self.write(&format!("{CLEAR}  {previous}\n"));
            }
            self.current = Some(line);
            self.draw();
        } else {
            self.write(&format!("{line}\n"));
            self.current = Some(line);
        }
    }

    /// The step under way says more; `shown` puts it on a line of its own where there is no
    /// spinner to show it.
    fn update(&mut self, line: String, shown: bool) {
        let line = printable(&line);
        if self.current.as_ref() == Some(&line) {
            return;
        }
        if !self.terminal && shown {
            self.write(&format!("{line}\n"));
        }
        self.current = Some(line);
        self.draw();
    }

    fn draw(&mut self) {
        let Some(current) = &self.current else { return };
        if !self.terminal {
            return;
        }
        let frame = FRAMES[self.frame % FRAMES.len()];
        let line: String = current.chars().take(self.width - 3).collect();
        let text = format!("{CLEAR}{frame} {line}");
        self.write(&text);
    }

    fn write(&mut self, text: &str) {
        if !text.is_empty() {
            // Progress is a courtesy: a closed stderr must not fail the deployment.
            let _ = self.out.write_all(text.as_bytes());
            let _ = self.out.flush();
        }
    }
}

/// Turns the status.json a daemon writes into the events its pass emits, for one generation.
/// A step shorter than the polling interval may not be seen.
#[derive(Debug, Default)]
pub(crate) struct Follower {
    step: Option<Step>,
    health: Option<(u32, bool)>,
    switched: bool,
    /// The canary step seen last (1-based).
    canary_step: Option<usize>,
}

impl Follower {
    /// What changed since the last status seen.
    pub(crate) fn events(&mut self, status: &Status) -> Vec<Progress> {
        let mut events = Vec::new();
        if status.phase != Phase::Progressing {
            return events;
        }
        let Some(step) = status.step else {
            return events;
        };
        if Some(step) != self.step {
            // What a step shorter than the polling interval left behind: the health gate's
            // outcome stays until the switch, and a drain means the switch happened.
            let passed = status.health.as_ref().filter(|h| h.passed);
            if let Some(h) = passed.filter(|_| step != Step::Health) {
                if self.health != Some((h.probes, true)) {
                    if self.step != Some(Step::Health) {
                        events.push(Progress::Step(Step::Health));
                    }
                    events.push(Progress::Health {
                        probes: h.probes,
                        passed: true,
                    });
                }
            }
            if matches!(step, Step::Draining | Step::Cleanup) && !self.switched {
                if self.step != Some(Step::Switching) {
                    events.push(Progress::Step(Step::Switching));
                }
                if let Some(live) = &status.live {
                    events.push(Progress::Switched {
                        color: live.color.clone(),
                        port: live.port,
                    });
                }
                self.switched = true;
            }
            if matches!(step, Step::Pulling | Step::Starting | Step::Health) {
                // A new attempt (the daemon's next pass): its switch is still to come.
                self.switched = false;
            }
            self.step = Some(step);
            self.health = None;
            events.push(Progress::Step(step));
        }
        if let (Step::Health, Some(h)) = (step, &status.health) {
            let seen = (h.probes, h.passed);
            if self.health != Some(seen) {
                self.health = Some(seen);
                events.push(Progress::Health {
                    probes: h.probes,
                    passed: h.passed,
                });
            }
        }
        if let (Step::Canary, Some(c)) = (step, &status.canary) {
            if self.canary_step != Some(c.step) {
                self.canary_step = Some(c.step);
                events.push(Progress::CanaryStep {
                    step: c.step,
                    steps: c.steps,
                    weight: c.weight,
                });
            }
        }
        events
    }
}

/// Whether a spinner line is drawn on stderr now, without its newline: a log line clears it
/// first (the next tick draws it again). Held while either writes.
static SPINNER_DRAWN: Mutex<bool> = Mutex::new(false);

fn spinner_drawn() -> MutexGuard<'static, bool> {
    SPINNER_DRAWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// stderr, noting whether what was written last leaves a spinner line open.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let mut drawn = spinner_drawn();
        std::io::stderr().write_all(buf)?;
        if let Some(&last) = buf.last() {
            *drawn = last != b'\n';
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The writer of log lines: on a terminal, a spinner line is erased before a log line.
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine
    }
}

/// One log line's writes.
pub struct LogLine;

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut drawn = spinner_drawn();
        let mut stderr = std::io::stderr().lock();
        if *drawn {
            stderr.write_all(CLEAR.as_bytes())?;
            *drawn = false;
        }
        stderr.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// The progress of one wait, on stderr; cloned into the pass's sink.
#[derive(Clone)]
pub(crate) struct Shown(Arc<Mutex<Renderer<Stderr>>>);

impl Shown {
    /// A spinner when stderr is a terminal, plain lines otherwise.
    pub(crate) fn stderr() -> Shown {
        let terminal = std::io::stderr().is_terminal();
        Shown(Arc::new(Mutex::new(Renderer::new(
            Stderr,
            terminal,
            terminal_width(),
        ))))
    }

    fn renderer(&self) -> MutexGuard<'_, Renderer<Stderr>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn event(&self, progress: &Progress) {
        self.renderer().event(progress);
    }

    pub(crate) fn tick(&self) {
        self.renderer().tick();
    }

    pub(crate) fn end(&self, end: &End) {
        self.renderer().end(end);
    }

    pub(crate) fn abandon(&self) {
        self.renderer().abandon();
    }

    /// For [`crate::reconcile::Pass::with_progress`].
    pub(crate) fn sink(&self) -> ProgressSink {
        let shown = self.clone();
        Box::new(move |progress| shown.event(&progress))
    }

    /// Runs `work`, moving the spinner on meanwhile.
    pub(crate) async fn during<T>(&self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        let mut ticks = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = ticks.tick() => self.tick(),
            }
        }
    }
}

/// How often the spinner moves (and a daemon's status.json is read).
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// The width of the terminal on stderr, 80 when it cannot be told.
fn terminal_width() -> usize {
    match rustix::termios::tcgetwinsize(std::io::stderr()) {
        Ok(size) if size.ws_col > 0 => usize::from(size.ws_col),
        _ => 80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::status::HealthProgress;

    fn deploy_events() -> Vec<Progress> {
        vec![
            Progress::Step(Step::Pulling),
            Progress::Step(Step::Starting),
            Progress::Step(Step::Health),
            Progress::Health {
                probes: 1,
                passed: false,
            },
            Progress::Health {
                probes: 2,
                passed: true,
            },
            Progress::Step(Step::Switching),
            Progress::Switched {
                color: "blue".into(),
                port: 3001,
            },
            Progress::Step(Step::Draining),
            Progress::Step(Step::Cleanup),
        ]
    }

    fn converged() -> End {
        End::Converged {
            image: "v1".into(),
            live: Some(Live {
                color: "blue".into(),
                image: "registry/api:v1".into(),
                container: "api-blue".into(),
                port: 3001,
            }),
        }
    }

    fn render(terminal: bool, events: &[Progress], ticks: usize, end: &End) -> String {
        let mut out = Vec::new();
        let mut renderer = Renderer::new(&mut out, terminal, 80);
        for event in events {
            renderer.event(event);
            for _ in 0..ticks {
                renderer.tick();
            }
        }
        renderer.end(end);
        String::from_utf8(out).unwrap()
    }

    /// What a terminal ends up showing: every line as it was last drawn.
    fn screen(raw: &str) -> String {
        let mut lines = vec![String::new()];
        for part in raw.split_inclusive(['\r', '\n']) {
            let text = part.replace("\x1b[2K", "");
            let line = lines.last_mut().unwrap();
            if let Some(text) = text.strip_suffix('\r') {
                line.push_str(text);
                line.clear();
            } else if let Some(text) = text.strip_suffix('\n') {
                line.push_str(text);
                lines.push(String::new());
            } else {
                line.push_str(&text);
            }
        }
        lines.join("\n")
    }

    #[test]
    fn plain_output_is_one_line_a_step_without_escape_codes() {
        let out = render(false, &deploy_events(), 3, &converged());
        assert_eq!(
            out,
            "progressing: pulling
progressing: starting
progressing: health
progressing: health passed (probe 2)
progressing: switching
progressing: switched to blue (127.0.0.1:3001)
progressing: draining
progressing: cleanup
converged: v1 live on blue (api-blue, 127.0.0.1:3001)
"
        );
    }

    #[test]
    fn a_terminal_keeps_a_line_per_finished_step_under_a_spinner() {
        let raw = render(true, &deploy_events(), 2, &converged());
        assert!(
            FRAMES
                .iter()
                .any(|f| raw.contains(&format!("{CLEAR}{f} progressing: health (probe 1)"))),
            "the spinner shows the probes: {raw:?}"
        );
        assert_eq!(
            screen(&raw),
            "  progressing: pulling
  progressing: starting
  progressing: health passed (probe 2)
  progressing: switched to blue (127.0.0.1:3001)
  progressing: draining
  progressing: cleanup
converged: v1 live on blue (api-blue, 127.0.0.1:3001)
"
        );
    }

    #[test]
    fn a_failure_names_the_step_it_happened_in() {
        let events = [
            Progress::Step(Step::Health),
            Progress::Health {
                probes: 7,
                passed: false,
            },
        ];
        assert_eq!(
            render(false, &events, 0, &End::Failed),
            "progressing: health\nfailed at health\n"
        );
        assert_eq!(
            screen(&render(true, &events, 1, &End::Failed)),
            "  progressing: health (probe 7)\nfailed at health\n"
        );
        assert_eq!(
            render(false, &[], 0, &End::Failed),
            "",
            "the error says it all"
        );
        assert_eq!(render(true, &[], 5, &End::Failed), "");
    }

    #[test]
    fn nothing_is_drawn_after_the_end() {
        let mut out = Vec::new();
        let mut renderer = Renderer::new(&mut out, true, 80);
        renderer.end(&End::Paused);
        renderer.event(&Progress::Step(Step::Pulling));
        renderer.tick();
        renderer.end(&converged());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "paused: the desired file says paused = true; nothing was changed\n"
        );
    }

    #[test]
    fn the_spinner_line_never_wraps_and_carries_no_escape_codes_of_its_text() {
        let mut out = Vec::new();
        let mut renderer = Renderer::new(&mut out, true, 30);
        renderer.event(&Progress::Switched {
            color: "blue\x1b]0;owned\x07".repeat(5),
            port: 1,
        });
        let raw = String::from_utf8(out).unwrap();
        let drawn = raw.rsplit('\r').next().unwrap().replace("\x1b[2K", "");
        assert!(drawn.chars().count() <= 30, "{drawn:?}");
        assert!(
            !drawn.contains('\x1b') && !drawn.contains("owned\x07"),
            "{drawn:?}"
        );
    }

    fn status(step: Option<Step>, health: Option<(u32, bool)>, live: Option<&str>) -> Status {
        let mut status = Status::new(Phase::Progressing);
        status.step = step;
        status.health = health.map(|(probes, passed)| HealthProgress {
            passed,
            probes,
            deadline_secs: 5,
        });
        status.live = live.map(|color| Live {
            color: color.into(),
            image: "v1".into(),
            container: format!("api-{color}"),
            port: 3001,
        });
        status
    }

    #[test]
    fn a_daemons_canary_steps_become_one_event_each() {
        let canary = |step, weight| {
            let mut s = status(Some(Step::Canary), Some((1, true)), Some("blue"));
            s.canary = Some(crate::state::status::CanaryProgress {
                image: "v2".into(),
                color: "green".into(),
                container: "api-green".into(),
                stable_color: "blue".into(),
                stable_image: Some("v1".into()),
                step,
                steps: 2,
                weight,
                step_started: String::new(),
                step_ends: None,
                stable: Default::default(),
                canary: Default::default(),
                judgement: String::new(),
            });
            s
        };
        let mut follower = Follower::default();
        follower.events(&status(Some(Step::Health), Some((1, true)), Some("blue")));
        let events: Vec<Progress> = [canary(1, 10), canary(1, 10), canary(2, 50)]
            .iter()
            .flat_map(|s| follower.events(s))
            .collect();
        assert_eq!(
            events,
            [
                Progress::Step(Step::Canary),
                Progress::CanaryStep {
                    step: 1,
                    steps: 2,
                    weight: 10
                },
                Progress::CanaryStep {
                    step: 2,
                    steps: 2,
                    weight: 50
                },
            ]
        );
    }

    #[test]
    fn a_daemons_status_changes_become_the_same_events_as_the_pass_emits() {
        let mut follower = Follower::default();
        let statuses = [
            status(None, None, None),
            status(Some(Step::Pulling), None, None),
            status(Some(Step::Pulling), None, None),
            status(Some(Step::Starting), None, None),
            status(Some(Step::Health), None, None),
            status(Some(Step::Health), Some((1, false)), None),
            status(Some(Step::Health), Some((1, false)), None),
            status(Some(Step::Health), Some((2, true)), None),
            status(Some(Step::Switching), None, None),
            status(Some(Step::Switching), None, Some("blue")),
            status(Some(Step::Draining), None, Some("blue")),
            status(Some(Step::Cleanup), None, Some("blue")),
        ];
        let events: Vec<Progress> = statuses.iter().flat_map(|s| follower.events(s)).collect();
        assert_eq!(events, deploy_events());

        let mut done = status(None, None, Some("blue"));
        done.phase = Phase::Converged;
        assert_eq!(follower.events(&done), vec![]);
    }

    #[test]
    fn a_switch_seen_only_after_the_drain_is_still_told_before_the_next_step() {
        let mut follower = Follower::default();
        assert_eq!(
            follower.events(&status(Some(Step::Cleanup), None, Some("green"))),
            vec![
                Progress::Step(Step::Switching),
                Progress::Switched {
                    color: "green".into(),
                    port: 3001
                },
                Progress::Step(Step::Cleanup)
            ]
        );
        // The daemon's next attempt switches again.
        follower.events(&status(Some(Step::Pulling), None, Some("green")));
        let events = follower.events(&status(Some(Step::Draining), None, Some("blue")));
        assert_eq!(events.len(), 3, "{events:?}");
    }

    #[test]
    fn a_health_gate_passed_between_two_reads_is_still_told() {
        let mut follower = Follower::default();
        follower.events(&status(Some(Step::Starting), None, None));
        assert_eq!(
            follower.events(&status(Some(Step::Switching), Some((3, true)), None)),
            vec![
                Progress::Step(Step::Health),
                Progress::Health {
                    probes: 3,
                    passed: true
                },
                Progress::Step(Step::Switching),
            ]
        );
        // Seen passing already: not told twice.
        let mut follower = Follower::default();
        follower.events(&status(Some(Step::Health), Some((2, true)), None));
        assert_eq!(
            follower.events(&status(Some(Step::Switching), Some((2, true)), None)),
            vec![Progress::Step(Step::Switching)]
        );
    }
}
