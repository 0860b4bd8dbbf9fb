//! Keeping the env file's values out of what fieldtrack captures and keeps.
//!
//! A container's log tail, a hook's output and an nginx command's output end up in
//! status.json, audit.jsonl, the webhook's message, the terminal and the journal. An app that
//! prints its configuration on a crash, or a smoke test run with `set -x`, would copy the
//! env file's secrets there. So every such output goes through a [`Redactor`] made from the
//! env file before it is kept anywhere: each value of [`MIN_CHARS`] characters or more
//! becomes [`REDACTED`]. Shorter values (`PORT=80`, `DEBUG=1`) would blank out ordinary
//! words and numbers and are too short to be worth stealing, so they are left alone.

use std::fmt;
use std::path::Path;

use super::env_file;

/// What stands in for a secret.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this many characters are not redacted.
pub const MIN_CHARS: usize = 4;

/// Replaces the env file's values in captured output. Its `Debug` shows how many values it
/// knows, never the values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    /// Values of [`MIN_CHARS`] or more characters, without duplicates.
    values: Vec<String>,
    /// Why the env file could not be read: then nothing is known to redact, so output is
    /// withheld entirely rather than shown unredacted.
    unreadable: Option<String>,
}

impl Redactor {
    /// A redactor for the values of `vars`, `KEY=value` lines as [`env_file::read`] gives.
    pub fn new<S: AsRef<str>>(vars: &[S]) -> Redactor {
        let mut values: Vec<String> = vars
            .iter()
            .filter_map(|var| var.as_ref().split_once('=').map(|(_, value)| value))
            .filter(|value| value.chars().count() >= MIN_CHARS)
            .map(str::to_owned)
            .collect();
        values.sort_unstable();
        values.dedup();
        Redactor {
            values,
            unreadable: None,
        }
    }

    /// A redactor for the env file at `path` (a missing file has no values). When the file
    /// cannot be read or parsed, the redactor withholds all output instead: it cannot know
    /// what to hide.
    pub fn from_env_file(path: &Path) -> Redactor {
        match env_file::read(path) {
            Ok(vars) => Redactor::new(&vars),
            Err(e) => Redactor {
                values: Vec::new(),
                unreadable: Some(e.to_string()),
            },
        }
    }

    /// `text` with every occurrence of a value replaced by [`REDACTED`]. Occurrences that
    /// overlap or touch (two values sharing characters, a value repeated) become one
    /// [`REDACTED`], so no part of either shows.
    pub fn redact(&self, text: &str) -> String {
        if let Some(reason) = &self.unreadable {
            if text.trim().is_empty() {
                return text.to_owned();
            }
            return format!("(output withheld: cannot read the env file to redact it: {reason})");
        }
        let mut spans = Vec::new();
        for value in &self.values {
            let mut from = 0;
            while let Some(at) = text[from..].find(value.as_str()) {
                let start = from + at;
                spans.push((start, start + value.len()));
                // The next occurrence may overlap this one ("aaaa" twice in "aaaaa"): go
                // on from the next character, not from the end of the match.
                from = start + text[start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if spans.is_empty() {
            return text.to_owned();
        }
        spans.sort_unstable();
        let mut out = String::with_capacity(text.len());
        let mut shown = 0;
        let mut spans = spans.into_iter().peekable();
        while let Some((start, mut end)) = spans.next() {
            while let Some(&(next_start, next_end)) = spans.peek() {
                if next_start > end {
                    break;
                }
                end = end.max(next_end);
                spans.next();
            }
            out.push_str(&text[shown..start]);
            out.push_str(REDACTED);
            shown = end;
        }
        out.push_str(&text[shown..]);
        out
    }
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("values", &self.values.len())
            .field("unreadable", &self.unreadable.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(vars: &[&str]) -> Redactor {
        Redactor::new(vars)
    }

    #[test]
    fn values_of_four_characters_or_more_are_replaced_wherever_they_appear() {
        let r = redactor(&["SECRET_TOKEN=hunter2-xyz", "PORT=80", "USER=root"]);
        assert_eq!(
            r.redact("token hunter2-xyz on port 80\nuser root, again:hunter2-xyz!"),
            "token [redacted] on port 80\nuser [redacted], again:[redacted]!"
        );
        // Characters, not bytes: three of them in nine bytes are still too short.
        let r = redactor(&["A=äöü", "B=äöüß"]);
        assert_eq!(r.redact("äöü äöüß"), "äöü [redacted]");
    }

    #[test]
    fn overlapping_values_are_replaced_entirely() {
        // Replacing the longest first would leave "gh" of the second behind.
        let r = redactor(&["A=abcdef", "B=cdefgh"]);
        assert_eq!(r.redact("xabcdefghx"), "x[redacted]x");
        // One value inside another.
        let r = redactor(&["A=pass", "B=password123"]);
        assert_eq!(r.redact("password123 pass"), "[redacted] [redacted]");
        // A value overlapping itself.
        let r = redactor(&["A=aaaa"]);
        assert_eq!(r.redact("baaaaab"), "b[redacted]b");
        // A value found in the replacement text is not replaced again.
        let r = redactor(&["A=dact", "B=secret"]);
        assert_eq!(r.redact("secret"), "[redacted]");
    }

    #[test]
    fn values_keep_their_equal_signs_and_quotes_as_parsed() {
        let vars =
            env_file::parse("DATABASE_URL=postgres://u:p4ss@h/db?x=1\nQ='a b c d'\n").unwrap();
        let r = Redactor::new(&vars);
        assert_eq!(
            r.redact("connect postgres://u:p4ss@h/db?x=1 failed; 'a b c d'"),
            "connect [redacted] failed; '[redacted]'"
        );
    }

    #[test]
    fn no_env_file_redacts_nothing() {
        let r = Redactor::from_env_file(Path::new("/nonexistent/.env"));
        assert_eq!(r.redact("all of it"), "all of it");
        assert_eq!(Redactor::default().redact("x"), "x");
    }

    #[test]
    fn an_unreadable_env_file_withholds_the_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "SECRET=hunter2-xyz\nnot a pair\n").unwrap();
        let out = Redactor::from_env_file(&path).redact("token hunter2-xyz");
        assert!(!out.contains("hunter2"), "{out}");
        assert!(
            out.starts_with("(output withheld: cannot read the env file"),
            "{out}"
        );
        assert!(out.contains("line 2"), "{out}");
        assert_eq!(Redactor::from_env_file(&path).redact(""), "");
    }

    #[test]
    fn debug_never_shows_a_value() {
        let r = redactor(&["SECRET=hunter2-xyz"]);
        let shown = format!("{r:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("values: 1"), "{shown}");
    }
}
