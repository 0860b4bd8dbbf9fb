//! `fieldtrack rollback`: the seed's rollback screen, then an ordinary deployment of an
//! earlier history entry (it is prepended to the history like any other).

use std::io::{BufRead, IsTerminal, Write};

use clap::Args;

use super::deploy::{submit, Submission};
use super::view::View;
use super::CliError;
use crate::config::Config;
use crate::desired::{Desired, ImageRef};
use crate::state::audit::ROLLBACK_NOTE_PREFIX;
use crate::state::status::{Phase, Status, Step};

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The history entry to roll back to (1 is the current deployment).
    #[arg(long, default_value_t = 2)]
    pub to: usize,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub submit: Submission,
}

pub async fn run(cfg: Config, args: RollbackArgs) -> Result<u8, CliError> {
    let view = View::read(&cfg)?;
    let mut entries = view.images();
    // Inside a drain (or a canary) the new image serves but is recorded only once the drain
    // is over: it is the current deployment, and the history's head is the one to go back to
    // (still running, so the rollback is a pure nginx switch).
    if let Some(current) = draining(&cfg, view.status.as_ref()) {
        if !entries.is_empty() && entries.first() != Some(&current) {
            entries.retain(|e| e != &current);
            entries.insert(0, current);
        }
    }
    if entries.is_empty() {
        return Err(CliError::Failed(format!(
            "No deployment history found.\nHistory file: {}\nDeploy at least once before attempting rollback.",
            cfg.history_file.display()
        )));
    }
    if entries.len() < 2 {
        return Err(CliError::Failed(format!(
            "Insufficient deployment history.\nCurrent deployment: {}\nNeed at least 2 deployments to rollback.",
            entries[0]
        )));
    }
    if args.to < 2 || args.to > entries.len() {
        return Err(CliError::Invalid(format!(
            "--to {}: choose an entry from 2 to {} (1 is the current deployment)",
            args.to,
            entries.len()
        )));
    }
    let current = &entries[0];
    let target = &entries[args.to - 1];
    let image =
        ImageRef::parse(target, &cfg.repository, &cfg.allowed_repositories).map_err(|e| {
            CliError::Invalid(format!(
                "history entry {} in {}: {e}",
                args.to,
                cfg.history_file.display()
            ))
        })?;

    // The history file is read as it is on disk: no escape sequence of it reaches the terminal.
    println!("{}", super::terminal::printable(&screen(&entries, args.to)));
    if !args.yes && !confirmed()? {
        return Err(CliError::Failed(
            "Rollback cancelled. Nothing was changed.".to_string(),
        ));
    }
    let by = args.submit.by();
    let note = format!("{ROLLBACK_NOTE_PREFIX}{current} to {target}");
    let recorded = view.recorded_digest(target);
    let desired = Desired::new(image, Some(&note), Some(&by), false).pinned(recorded.clone());
    if let Some(recorded) = &desired.digest {
        eprintln!("rolling back to {target} by its recorded digest {recorded}");
        if let Some(now) = registry_digest(&cfg, &desired).await {
            if &now != recorded {
                eprintln!(
                    "note: the tag {target} now points to {now} in the registry; the recorded {recorded} is what comes back"
                );
            }
        }
    }
    submit(cfg, &desired, args.submit.no_wait, args.submit.timeout).await
}

/// The image of the desired generation when it is live and draining, or a canary getting a
/// share of the traffic (not yet in the history either way): rolling back from it goes to
/// the history's head.
fn draining(cfg: &Config, status: Option<&Status>) -> Option<String> {
    let status = status?;
    if status.phase != Phase::Progressing
        || !matches!(
            status.step,
            Some(Step::Draining | Step::Cleanup | Step::Canary)
        )
    {
        return None;
    }
    let desired = Desired::load(&cfg.desired_file, cfg).ok()?;
    (status.generation.as_deref() == Some(desired.generation.as_str()))
        .then(|| desired.image.as_written().to_string())
}

/// What the image's tag resolves to in the registry now (None when it cannot be asked).
async fn registry_digest(cfg: &Config, desired: &Desired) -> Option<String> {
    desired.image.tag()?;
    crate::reconcile::registry_digest(cfg, &cfg.image_reference(&desired.image)).await
}

/// The seed's screen: current, previous, the numbered history with the target marked.
fn screen(entries: &[String], to: usize) -> String {
    let mut out = format!("Current deployment : {}\n", entries[0]);
    out.push_str(&format!("Previous deployment: {}\n\n", entries[1]));
    out.push_str("Deployment history:\n");
    for (i, image) in entries.iter().enumerate() {
        let n = i + 1;
        let mark = if n == 1 {
            " (current)"
        } else if n == to {
            " ← rollback target"
        } else {
            ""
        };
        out.push_str(&format!("  {n}. {image}{mark}\n"));
    }
    out.push_str("\n⚠️  WARNING: This will redeploy the previous version.\n");
    out.push_str(&format!(
        "Current production will be replaced with: {}\n",
        entries[to - 1]
    ));
    out
}

/// Asks `Continue with rollback? (yes/no):` and reads one line. Only `yes` proceeds; end
/// of input (a pipe with nothing in it) cancels, so it never hangs on a closed stdin.
fn confirmed() -> Result<bool, CliError> {
    print!("Continue with rollback? (yes/no): ");
    let _ = std::io::stdout().flush();
    let stdin = std::io::stdin();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if !stdin.is_terminal() {
        println!();
    }
    match read {
        Ok(_) => Ok(line.trim() == "yes"),
        Err(e) => Err(CliError::Failed(format!("cannot read the answer: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screen_matches_the_seed() {
        let entries: Vec<String> = ["b8c4d2e", "a4f91c2", "7b3e9f1", "91d0f32", "c5a8e7d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let expected = "Current deployment : b8c4d2e
Previous deployment: a4f91c2

Deployment history:
  1. b8c4d2e (current)
  2. a4f91c2 ← rollback target
  3. 7b3e9f1
  4. 91d0f32
  5. c5a8e7d

⚠️  WARNING: This will redeploy the previous version.
Current production will be replaced with: a4f91c2
";
        assert_eq!(screen(&entries, 2), expected);
        assert!(screen(&entries, 4).contains("  4. 91d0f32 ← rollback target\n"));
        assert!(screen(&entries, 4).ends_with("replaced with: 91d0f32\n"));
    }
}
