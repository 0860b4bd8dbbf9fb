//! Deployment hooks: the operator's own programs, run at two fixed points of a deployment.
//!
//! `pre_switch` runs once the candidate is healthy and before traffic moves to it, so a
//! failing hook (smoke test, migration check) stops the attempt while production is
//! untouched. `post_deploy` runs after a full success (cache purge, chat message, ...).
//! Hooks are argument arrays run without a shell, like every command fieldtrack runs, and
//! they learn what is being deployed from `FIELDTRACK_*` environment variables (not the
//! env file's: that is the container's). What a hook prints is kept only with the env
//! file's values redacted, in case it reads them anyway. Each one
//! is killed, with every process it started in its own process group, once
//! `hooks.hook_timeout` is up, so a hung hook cannot hold a deployment forever. A hook is
//! done when it exits, not when its pipes close: what it left running in the background
//! may hold them for as long as it lives.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _};

use super::command::{display_command, output_tail};
use crate::model::Color;
use crate::secrets::redact::Redactor;

/// The hook run after the candidate is healthy and before the switch.
pub const PRE_SWITCH: &str = "pre_switch";
/// The hook run after a deployment fully succeeded.
pub const POST_DEPLOY: &str = "post_deploy";

/// How many trailing bytes of each output stream are kept while a hook runs: a chatty hook
/// must not grow the daemon's memory, and only the tail is ever shown.
const OUTPUT_TAIL_BYTES: usize = 64 * 1024;

/// Why a hook did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The program could not be started (not installed, not executable, no resources).
    #[error("failed to start {name} hook `{command}`: {source}")]
    Spawn {
        name: String,
        command: String,
        #[source]
        source: io::Error,
    },
    /// Waiting for the program or reading its output failed.
    #[error("failed to wait for {name} hook `{command}`: {source}")]
    Wait {
        name: String,
        command: String,
        #[source]
        source: io::Error,
    },
    /// The program exited unsuccessfully; `output` is the last lines of its stdout then its
    /// stderr.
    #[error("{name} hook `{command}` failed ({status}): {}", or_no_output(output))]
    Failed {
        name: String,
        command: String,
        status: ExitStatus,
        output: String,
    },
    /// The program ran longer than `hooks.hook_timeout` and was killed with its process group.
    #[error(
        "{name} hook `{command}` timed out after {} and was killed",
        humantime::format_duration(*timeout)
    )]
    TimedOut {
        name: String,
        command: String,
        timeout: Duration,
    },
}

fn or_no_output(output: &str) -> &str {
    if output.is_empty() {
        "no output"
    } else {
        output
    }
}

/// What a hook is told about the deployment, through its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookContext {
    /// `FIELDTRACK_APP`: the configured `app`.
    pub app: String,
    /// `FIELDTRACK_IMAGE`: the desired image as written in the desired file.
    pub image: String,
    /// `FIELDTRACK_REFERENCE`: the full reference that is pulled and run.
    pub reference: String,
    /// `FIELDTRACK_PREVIOUS`: the image live before this deployment; empty when none was.
    pub previous: Option<String>,
    /// `FIELDTRACK_COLOR`: the color the new image runs in.
    pub color: Color,
    /// `FIELDTRACK_PORT`: the port that color is published on (127.0.0.1).
    pub port: u16,
    /// Not told to the hook: cleans its output of the env file's values before it goes into
    /// a message or a log.
    pub redactor: Redactor,
}

impl HookContext {
    /// The variables added to the hook's environment, which it otherwise inherits from
    /// fieldtrack.
    pub fn env(&self) -> [(&'static str, String); 6] {
        [
            ("FIELDTRACK_APP", self.app.clone()),
            ("FIELDTRACK_IMAGE", self.image.clone()),
            ("FIELDTRACK_REFERENCE", self.reference.clone()),
            (
                "FIELDTRACK_PREVIOUS",
                self.previous.clone().unwrap_or_default(),
            ),
            ("FIELDTRACK_COLOR", self.color.as_str().to_owned()),
            ("FIELDTRACK_PORT", self.port.to_string()),
        ]
    }
}

/// Runs the hook `name` (e.g. [`PRE_SWITCH`]): `argv` without a shell, stdin closed,
/// stdout and stderr captured, the [`HookContext`] in its environment. An empty `argv`
/// means no hook is configured and succeeds at once.
///
/// After `timeout` the hook's whole process group is killed. Dropping the returned future
/// (a cancelled attempt) kills the hook's own process too.
pub async fn run_hook(
    name: &str,
    argv: &[String],
    ctx: &HookContext,
    timeout: Duration,
) -> Result<(), HookError> {
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let command = display_command(argv);
    tracing::info!(hook = name, command = %command, color = %ctx.color, "running hook");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(ctx.env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timeout also reaches what the hook started
        // (a script's children), and a terminal's Ctrl-C goes to fieldtrack, not the hook.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookError::Spawn {
            name: name.to_owned(),
            command: command.clone(),
            source,
        })?;
    let pgid = child.id();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (mut out, mut err) = (Tail::default(), Tail::default());

    // The hook is done when it exits, not when its pipes close: a background process it
    // started (`sleep 30 &`) inherits them and may hold them open for as long as it lives.
    // The pipes are read while it runs (a full pipe would block it), and once it exited
    // only what it left in them is taken.
    let waited = tokio::time::timeout(timeout, async {
        let read = async {
            let (a, b) = tokio::join!(out.fill(&mut stdout), err.fill(&mut stderr));
            a.and(b)
        };
        tokio::select! {
            status = child.wait() => status,
            read = read => {
                read?;
                child.wait().await
            }
        }
    })
    .await;
    let status = match waited {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => {
            return Err(HookError::Wait {
                name: name.to_owned(),
                command,
                source,
            })
        }
        Err(_) => {
            kill_group(pgid);
            // Reaps the direct child; the group kill above already sent it SIGKILL.
            let _ = child.kill().await;
            tracing::warn!(hook = name, command = %command, "hook timed out and was killed");
            return Err(HookError::TimedOut {
                name: name.to_owned(),
                command,
                timeout,
            });
        }
    };
    // A read error now only shortens the output shown; the exit status is what counts.
    let _ = out.drain(&mut stdout).await;
    let _ = err.drain(&mut stderr).await;
    let (stdout, stderr) = (out.finish(), err.finish());
    if status.success() {
        tracing::info!(hook = name, command = %command, "hook succeeded");
        return Ok(());
    }
    Err(HookError::Failed {
        name: name.to_owned(),
        command,
        status,
        output: output_tail(&stdout, &stderr, &ctx.redactor),
    })
}

/// SIGKILL to the process group the hook leads. The group id stays reserved while any of
/// its members lives, so this reaches only the hook and what it started; once they are all
/// gone the call fails harmlessly.
fn kill_group(pgid: Option<u32>) {
    let Some(pgid) = pgid.and_then(|id| i32::try_from(id).ok()) else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    if let Some(pgid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    }
}

/// After the hook exited, a read of its pipe that finds nothing within this long means
/// the hook's own output is all read: what still holds the pipe is something it left
/// running, and its later output is not the hook's.
const AFTER_EXIT_IDLE: Duration = Duration::from_millis(50);

/// The most spent reading a pipe after the hook exited, against a background process that
/// keeps writing into it.
const AFTER_EXIT_MAX: Duration = Duration::from_secs(1);

/// The last [`OUTPUT_TAIL_BYTES`] or so of one output stream, kept across reads that may
/// be cut short (the hook exits, the timeout falls) without losing what was read.
#[derive(Default)]
struct Tail {
    kept: Vec<u8>,
    cut: bool,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
        if self.kept.len() > 2 * OUTPUT_TAIL_BYTES {
            self.kept.drain(..self.kept.len() - OUTPUT_TAIL_BYTES);
            self.cut = true;
        }
    }

    /// Reads `stream` to its end. Cancel-safe: dropped between reads, nothing read is lost.
    async fn fill<R: AsyncRead + Unpin>(&mut self, stream: &mut Option<R>) -> io::Result<()> {
        let Some(stream) = stream else {
            return Ok(());
        };
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            self.push(&buf[..n]);
        }
    }

    /// Reads what `stream` holds now: up to its end, or until it stays empty for
    /// [`AFTER_EXIT_IDLE`], at most [`AFTER_EXIT_MAX`].
    async fn drain<R: AsyncRead + Unpin>(&mut self, stream: &mut Option<R>) -> io::Result<()> {
        let Some(stream) = stream else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + AFTER_EXIT_MAX;
        let mut buf = [0u8; 8192];
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(AFTER_EXIT_IDLE, stream.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => self.push(&buf[..n]),
                Ok(Err(e)) => return Err(e),
            }
        }
        Ok(())
    }

    /// What is kept, from the start of a line when the front was cut: a line cut in its
    /// middle could show the end of a secret that redaction no longer recognises.
    fn finish(mut self) -> Vec<u8> {
        if self.cut {
            let first_line = self
                .kept
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.kept.len(), |i| i + 1);
            self.kept.drain(..first_line);
        }
        self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Instant;

    fn ctx() -> HookContext {
        HookContext {
            app: "api".into(),
            image: "v2".into(),
            reference: "ghcr.io/fieldtrack-tech/api:v2".into(),
            previous: Some("v1".into()),
            color: Color::Green,
            port: 3002,
            redactor: Redactor::default(),
        }
    }

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn hooks_see_the_deployment_in_their_environment() {
        let check = argv(&[
            "sh",
            "-c",
            "test \"$FIELDTRACK_COLOR\" = green && test \"$FIELDTRACK_PORT\" = 3002 \
             && test \"$FIELDTRACK_IMAGE\" = v2 && test \"$FIELDTRACK_PREVIOUS\" = v1 \
             && test \"$FIELDTRACK_APP\" = api \
             && test \"$FIELDTRACK_REFERENCE\" = ghcr.io/fieldtrack-tech/api:v2",
        ]);
        run_hook(PRE_SWITCH, &check, &ctx(), TIMEOUT).await.unwrap();

        let first = HookContext {
            previous: None,
            ..ctx()
        };
        let check = argv(&[
            "sh",
            "-c",
            "test -z \"$FIELDTRACK_PREVIOUS\" && test \"${FIELDTRACK_PREVIOUS+set}\" = set",
        ]);
        run_hook(POST_DEPLOY, &check, &first, TIMEOUT)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_status_and_output_tail() {
        let script = argv(&[
            "sh",
            "-c",
            "for i in $(seq 1 30); do echo out$i; done; echo 'smoke test failed' >&2; exit 3",
        ]);
        let err = run_hook(PRE_SWITCH, &script, &ctx(), TIMEOUT)
            .await
            .unwrap_err();
        let HookError::Failed {
            name,
            status,
            output,
            ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(name, "pre_switch");
        assert_eq!(status.code(), Some(3));
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 20, "{output}");
        assert_eq!(lines[0], "out12");
        assert_eq!(lines[19], "smoke test failed");
        let msg = err.to_string();
        assert!(
            msg.starts_with("pre_switch hook `sh -c \"for i in"),
            "{msg}"
        );
        assert!(msg.contains("failed (exit status: 3): out12\n"), "{msg}");
    }

    #[tokio::test]
    async fn env_values_in_a_failing_hooks_output_are_redacted() {
        let ctx = HookContext {
            redactor: Redactor::new(&["SECRET_TOKEN=hunter2-xyz"]),
            ..ctx()
        };
        let script = argv(&[
            "sh",
            "-c",
            "s=$(printf hunter2-%s xyz); echo token=$s; echo \"$s\" >&2; exit 1",
        ]);
        let err = run_hook(PRE_SWITCH, &script, &ctx, TIMEOUT)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.ends_with("token=[redacted]\n[redacted]"), "{msg}");
        assert!(!format!("{err:?}").contains("hunter2-xyz"), "{err:?}");
    }

    #[tokio::test]
    async fn a_long_output_is_cut_at_a_line_start() {
        // A secret-looking line longer than what is kept: no end of it survives the cut.
        let script = argv(&[
            "sh",
            "-c",
            "head -c 200000 /dev/zero | tr '\\0' x; echo; echo last; exit 1",
        ]);
        let err = run_hook(PRE_SWITCH, &script, &ctx(), TIMEOUT)
            .await
            .unwrap_err();
        let HookError::Failed { output, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(output, "last");
    }

    #[tokio::test]
    async fn a_silent_failure_says_so() {
        let err = run_hook(POST_DEPLOY, &argv(&["false"]), &ctx(), TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "post_deploy hook `false` failed (exit status: 1): no output"
        );
    }

    #[tokio::test]
    async fn a_hung_hook_is_killed_at_the_timeout() {
        let start = Instant::now();
        let err = run_hook(
            PRE_SWITCH,
            &argv(&["sleep", "10"]),
            &ctx(),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        let elapsed = start.elapsed();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err:?}");
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        assert_eq!(
            err.to_string(),
            "pre_switch hook `sleep 10` timed out after 300ms and was killed"
        );
    }

    #[tokio::test]
    async fn a_timeout_also_kills_what_the_hook_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The shell starts a grandchild that would outlive it, and keeps our pipes open.
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let err = run_hook(
            PRE_SWITCH,
            &argv(&["sh", "-c", &script]),
            &ctx(),
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HookError::TimedOut { .. }), "{err:?}");
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        // Gone, or a zombie waiting for init to reap it.
        while Instant::now() < deadline {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("grandchild {pid} still running");
    }

    /// Kills `pid` (a background process a test hook left) when dropped.
    struct KillOnDrop(i32);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(pid) = rustix::process::Pid::from_raw(self.0) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }

    fn read_pid(path: &Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A hook is done when it exits: a background process it leaves holding its stdout and
    /// stderr does not make it time out, and what the hook printed before it exited is kept.
    #[tokio::test]
    async fn a_hook_is_done_when_it_exits_though_a_background_child_holds_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "sleep 30 & echo $! > {}; echo smoke ok; echo 'on stderr' >&2; exit 0",
            pid_file.display()
        );
        let done = run_hook(
            PRE_SWITCH,
            &argv(&["sh", "-c", &script]),
            &ctx(),
            Duration::from_secs(10),
        )
        .await;
        let _background = KillOnDrop(read_pid(&pid_file));
        done.unwrap();

        let script = format!(
            "sleep 30 & echo $! > {}; echo 'smoke test failed'; exit 4",
            pid_file.display()
        );
        let err = run_hook(
            PRE_SWITCH,
            &argv(&["sh", "-c", &script]),
            &ctx(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        let _background = KillOnDrop(read_pid(&pid_file));
        let HookError::Failed { status, output, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(status.code(), Some(4));
        assert_eq!(output, "smoke test failed");
    }

    #[tokio::test]
    async fn no_hook_configured_is_a_no_op() {
        run_hook(PRE_SWITCH, &[], &ctx(), Duration::from_millis(1))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn arguments_are_not_interpreted_by_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let out = out.display().to_string();
        // Through a shell this would run `id` and create `out`.
        run_hook(
            POST_DEPLOY,
            &argv(&["echo", "$(id)", ";", "touch", &out]),
            &ctx(),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert!(!Path::new(&out).exists());

        // The program gets each argument exactly as written: here a program that prints its
        // arguments and fails, so that the output comes back in the error.
        let print_args = "printf '%s\\n' \"$@\"; exit 1";
        let err = run_hook(
            POST_DEPLOY,
            &argv(&[
                "sh",
                "-c",
                print_args,
                "sh",
                "$(id)",
                "a  b",
                "`id`; touch x",
            ]),
            &ctx(),
            TIMEOUT,
        )
        .await
        .unwrap_err();
        let HookError::Failed { output, .. } = err else {
            panic!("{err:?}");
        };
        assert_eq!(output, "$(id)\na  b\n`id`; touch x");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error_naming_it() {
        let err = run_hook(
            PRE_SWITCH,
            &argv(&["/nonexistent/check-smoke", "--fast"]),
            &ctx(),
            TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HookError::Spawn { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("failed to start pre_switch hook `/nonexistent/check-smoke --fast`: "),
            "{msg}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
