//! What the adapters that run the operator's commands (hooks, nginx's `test_command` and
//! `reload_command`) share: how a command is shown in a message, and the redacted tail of
//! its output that a failure quotes.

use crate::secrets::redact;

/// How many lines of a failed command's output an error message quotes.
pub(crate) const OUTPUT_TAIL_LINES: usize = 20;

/// The last [`OUTPUT_TAIL_LINES`] non-empty lines of stdout then stderr, the env file's
/// values redacted. stderr comes last so that it survives the cut: it is where a failing
/// program says why.
pub(crate) fn output_tail(stdout: &[u8], stderr: &[u8], redactor: &redact::Redactor) -> String {
    // Redacted whole, before the cut, so that the cut splits no value.
    let text = redactor.redact(&format!(
        "{}\n{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    ));
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    lines[lines.len().saturating_sub(OUTPUT_TAIL_LINES)..].join("\n")
}

/// A command as an operator would type it, for messages (hooks and nginx commands run
/// without a shell; this only shows them).
pub(crate) fn display_command(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"') {
                format!("{arg:?}")
            } else {
                arg.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
