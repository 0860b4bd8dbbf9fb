//! Turns a `toml` error into one line that names the key.
//!
//! The `toml` crate's own `Display` is a multi-line source snippet. That reads well in a
//! terminal but not in a log line or in `status.json`, and the snippet would echo the
//! offending line verbatim, which may hold a secret (a webhook URL with its token). So we
//! keep the crate's short message, add the line and column, and work out the dotted key
//! (`container.port`) from the text around the error.

use std::fmt;

/// Where and why a TOML file could not be read into its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlErrorDetail {
    /// 1-based line of the error, when the parser reported a position.
    pub line: Option<usize>,
    /// 1-based column (in characters) of the error, when known.
    pub column: Option<usize>,
    /// The dotted key the error is about (`health.interval`), when it could be worked out.
    pub key: Option<String>,
    /// The parser's one-line message, e.g. "unknown field `colour`, expected ...".
    pub message: String,
}

impl TomlErrorDetail {
    /// Describes `err`, which came from parsing `text`.
    pub fn new(text: &str, err: &toml::de::Error) -> TomlErrorDetail {
        let message = err.message().trim().to_owned();
        let Some(start) = err.span().map(|s| s.start) else {
            return TomlErrorDetail {
                line: None,
                column: None,
                key: None,
                message,
            };
        };
        let before = text.get(..start).unwrap_or(text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        let line_end = text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i);
        let key = key_of_line(&text[line_start..line_end]).map(|key| {
            match section_before(&text[..line_start]) {
                Some(section) => format!("{section}.{key}"),
                None => key,
            }
        });
        TomlErrorDetail {
            line: Some(line),
            column: Some(column),
            key,
            message,
        }
    }
}

impl fmt::Display for TomlErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)?;
        match (self.line, self.column) {
            (Some(line), Some(column)) => write!(f, " (line {line}, column {column})"),
            (Some(line), None) => write!(f, " (line {line})"),
            _ => Ok(()),
        }
    }
}

/// The key of a `key = value` line (dotted keys joined, quotes removed), or `None` when the
/// line is something else: a header, an array continuation, an inline table (whose inner
/// key we cannot tell apart from the outer one without a real parser).
fn key_of_line(line: &str) -> Option<String> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('[') || trimmed.starts_with('#') {
        return None;
    }
    let (key, value) = trimmed.split_once('=')?;
    if value.trim_start().starts_with('{') {
        return None;
    }
    dotted(key)
}

/// The table named by the last `[header]` in `text`, if any.
fn section_before(text: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix('[')?;
        let inner = inner.strip_prefix('[').unwrap_or(inner);
        let end = inner.find(']')?;
        dotted(&inner[..end])
    })
}

/// Normalises `a . "b"` to `a.b`; `None` if it does not look like a plain key.
fn dotted(key: &str) -> Option<String> {
    let parts: Vec<String> = key
        .split('.')
        .map(|part| {
            let part = part.trim();
            let part = part
                .strip_prefix('"')
                .and_then(|p| p.strip_suffix('"'))
                .or_else(|| part.strip_prefix('\'').and_then(|p| p.strip_suffix('\'')))
                .unwrap_or(part);
            part.to_owned()
        })
        .collect();
    let plain = parts.iter().all(|p| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    plain.then(|| parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        app: Option<String>,
        container: Option<Section>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Section {
        port: Option<i64>,
        cmd: Option<Vec<String>>,
    }

    fn detail(text: &str) -> TomlErrorDetail {
        let err = toml::from_str::<Doc>(text).unwrap_err();
        TomlErrorDetail::new(text, &err)
    }

    #[test]
    fn unknown_top_level_key() {
        let d = detail("app = \"x\"\ncolour = 1\n");
        assert_eq!(d.key.as_deref(), Some("colour"));
        assert_eq!((d.line, d.column), (Some(2), Some(1)));
        assert!(d.message.contains("unknown field `colour`"));
        assert!(d.to_string().starts_with("colour: unknown field `colour`"));
        assert!(d.to_string().ends_with("(line 2, column 1)"));
    }

    #[test]
    fn unknown_key_in_a_section() {
        let d = detail("app = \"x\"\n\n[container] # the box\nport = 1\ncolour = 1\n");
        assert_eq!(d.key.as_deref(), Some("container.colour"));
        assert_eq!(d.line, Some(5));
    }

    #[test]
    fn dotted_key_at_top_level() {
        let d = detail("container.colour = 1\n");
        assert_eq!(d.key.as_deref(), Some("container.colour"));
    }

    #[test]
    fn inline_table_gives_position_but_no_key() {
        let d = detail("container = { colour = 1 }\n");
        assert_eq!(d.key, None);
        assert_eq!((d.line, d.column), (Some(1), Some(15)));
        assert!(d.to_string().contains("unknown field `colour`"));
    }

    #[test]
    fn wrong_type_names_the_key() {
        let d = detail("[container]\nport = \"x\"\n");
        assert_eq!(d.key.as_deref(), Some("container.port"));
        assert!(d.message.contains("invalid type"));
    }

    #[test]
    fn wrong_type_inside_multiline_array_has_position() {
        let d = detail("[container]\ncmd = [\n  \"a\",\n  3,\n]\n");
        assert_eq!(d.key, None);
        assert_eq!(d.line, Some(4));
    }

    #[test]
    fn syntax_error_names_the_key() {
        let d = detail("app = \"x\n");
        assert_eq!(d.key.as_deref(), Some("app"));
        assert_eq!(d.line, Some(1));
    }

    #[test]
    fn quoted_keys_are_unquoted() {
        assert_eq!(dotted(" \"a\" . 'b' ").as_deref(), Some("a.b"));
        assert_eq!(dotted("a b"), None);
        assert_eq!(dotted(""), None);
    }

    #[test]
    fn position_counts_characters_not_bytes() {
        let d = detail("app = \"é\" x\n");
        assert_eq!(d.line, Some(1));
        assert_eq!(d.column, Some(11));
    }
}
