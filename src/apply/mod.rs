//! Applying a plan: the only code that touches the outside world. One module per external
//! system, each behind a trait so the decision logic can be tested with fakes.

pub mod env_file;
pub mod health;
pub mod hooks;
pub mod notify;
pub mod proxy;
pub mod runtime;

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
