//! `desired.toml`: what should be running, as CI, an operator or the CLI wrote it.
//!
//! This is the spec side of the reconciler. Parsing is strict (unknown keys, bad images and
//! control characters are refused) and its errors say what kind of wait they deserve: a
//! file that does not parse may simply be half-written by `scp` and is worth re-reading once
//! the writer goes quiet, while a file that parses but names a bad image is wrong until
//! someone changes it.

pub mod promote;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::safety::{self, check_file_safety, SafetyError};
use crate::config::{Config, TomlErrorDetail};
use crate::image::check_digest;
pub use crate::image::{ImageError, ImageRef};

/// Longest `note`, in characters.
pub const NOTE_MAX_CHARS: usize = 1000;
/// Longest `by`, in characters.
pub const BY_MAX_CHARS: usize = 100;

/// Why the desired file could not be used. See [`DesiredError::kind`] for what to do.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// The file could not be read: missing, unreadable, too large, not UTF-8.
    #[error("cannot read desired file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file failed the file-safety check.
    #[error(transparent)]
    Unsafe(SafetyError),
    /// Not valid TOML: possibly a writer is still in the middle of it.
    #[error("{path}: not valid TOML: {detail}")]
    Syntax {
        path: PathBuf,
        detail: TomlErrorDetail,
    },
    /// Valid TOML without an `image`: an empty file, as a writer truncating it leaves it.
    #[error("{path}: image: missing; the desired file must name an image")]
    MissingImage { path: PathBuf },
    /// Valid TOML with an unknown key or a value of the wrong type.
    #[error("{path}: {detail}")]
    Schema {
        path: PathBuf,
        detail: TomlErrorDetail,
    },
    /// `image` is not an acceptable image.
    #[error("{path}: image: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    /// `note` or `by` breaks a rule; `value` is quoted with `{:?}`.
    #[error("{path}: {key}: invalid value {value}: {reason}")]
    Field {
        path: PathBuf,
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// The four kinds of [`DesiredError`], by what the caller should do about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DesiredErrorKind {
    /// The file cannot be read; maybe it does not exist yet.
    Io,
    /// It does not parse (or is empty): maybe half-written. Re-read once the writer goes
    /// quiet before reporting it as invalid.
    Parse,
    /// It parses but a value is wrong: `invalid` until the file changes.
    Invalid,
    /// Refused by the file-safety rule.
    Unsafe,
}

impl DesiredError {
    /// What kind of failure this is.
    pub fn kind(&self) -> DesiredErrorKind {
        match self {
            DesiredError::Io { .. } => DesiredErrorKind::Io,
            DesiredError::Unsafe(_) => DesiredErrorKind::Unsafe,
            DesiredError::Syntax { .. } | DesiredError::MissingImage { .. } => {
                DesiredErrorKind::Parse
            }
            DesiredError::Schema { .. }
            | DesiredError::Image { .. }
            | DesiredError::Field { .. } => DesiredErrorKind::Invalid,
        }
    }

    /// Whether the file may be half-written (see [`DesiredErrorKind::Parse`]).
    pub fn is_parse_error(&self) -> bool {
        self.kind() == DesiredErrorKind::Parse
    }
}

/// The desired state, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub image: ImageRef,
    /// Free text, kept in the audit log; no control characters, at most 1000 characters.
    pub note: Option<String>,
    /// Who asked; no control characters, at most 100 characters.
    pub by: Option<String>,
    /// Observe and report, change nothing.
    pub paused: bool,
    /// `sha256:<64 hex>` pinning what `image` names: a rollback writes the digest it
    /// recorded, so a tag moved in the registry cannot change what comes back. The history
    /// still records `image` as written.
    pub digest: Option<String>,
    /// Changes whenever the file's bytes change; see [`generation_of`].
    pub generation: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDesired {
    image: Option<String>,
    digest: Option<String>,
    note: Option<String>,
    by: Option<String>,
    paused: Option<bool>,
}

impl Desired {
    /// Builds the desired state the CLI or the daemon is about to write, its generation being
    /// that of [`Desired::render`]'s output. `note` and `by` are made acceptable with
    /// [`sanitize_text`] (a note may quote an error message with newlines in it); check them
    /// with [`check_text`] first to refuse such input instead.
    pub fn new(image: ImageRef, note: Option<&str>, by: Option<&str>, paused: bool) -> Desired {
        let mut desired = Desired {
            image,
            note: note.map(|n| sanitize_text(n, NOTE_MAX_CHARS)),
            by: by.map(|b| sanitize_text(b, BY_MAX_CHARS)),
            paused,
            digest: None,
            generation: String::new(),
        };
        desired.generation = generation_of(desired.render().as_bytes());
        desired
    }

    /// Pins `digest` (see the field); the generation follows the new content.
    pub fn pinned(mut self, digest: Option<String>) -> Desired {
        self.digest = digest.filter(|_| self.image.digest().is_none());
        self.generation = generation_of(self.render().as_bytes());
        self
    }

    /// The full reference to pull and run: the image's, with the pinned digest when there
    /// is one (`repo:tag@sha256:…`; the engine resolves it by the digest).
    pub fn reference(&self, cfg: &Config) -> String {
        let reference = cfg.image_reference(&self.image);
        match &self.digest {
            Some(digest) if self.image.digest().is_none() => format!("{reference}@{digest}"),
            _ => reference,
        }
    }

    /// Writes this state to `path` atomically (temp file, fsync, rename), refusing to write
    /// through an unsafe file already there.
    pub fn write(&self, path: &Path) -> Result<(), DesiredError> {
        if path.exists() || path.is_symlink() {
            check_file_safety(path).map_err(|err| match err {
                SafetyError::Inspect { path, source } => DesiredError::Io { path, source },
                other => DesiredError::Unsafe(other),
            })?;
        }
        crate::state::atomic::write_atomic(path, self.render().as_bytes()).map_err(|source| {
            DesiredError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Reads, safety-checks and parses the desired file at `path`.
    pub fn load(path: &Path, cfg: &Config) -> Result<Desired, DesiredError> {
        // Opened once, checked on what was opened: CI's user may rename anything over it.
        let text = safety::read_safe_file(path).map_err(|err| match err {
            SafetyError::Inspect { path, source } => DesiredError::Io { path, source },
            other => DesiredError::Unsafe(other),
        })?;
        Desired::parse(&text, path, cfg)
    }

    /// Parses `text`, the content of the desired file at `path` (used in messages only).
    pub fn parse(text: &str, path: &Path, cfg: &Config) -> Result<Desired, DesiredError> {
        // Syntax first, on its own: only a file that is not TOML at all may be half-written.
        // A truncated file cannot hide as valid TOML with a wrong value, because every value
        // it can hold is a quoted string or a complete `true`/`false`.
        if let Err(err) = toml::from_str::<toml::Table>(text) {
            return Err(DesiredError::Syntax {
                path: path.to_path_buf(),
                detail: TomlErrorDetail::new(text, &err),
            });
        }
        let raw: RawDesired = toml::from_str(text).map_err(|err| DesiredError::Schema {
            path: path.to_path_buf(),
            detail: TomlErrorDetail::new(text, &err),
        })?;
        let Some(image) = raw.image else {
            return Err(DesiredError::MissingImage {
                path: path.to_path_buf(),
            });
        };
        let image = ImageRef::parse(&image, &cfg.repository, &cfg.allowed_repositories).map_err(
            |source| DesiredError::Image {
                path: path.to_path_buf(),
                source,
            },
        )?;
        let field = |key: &'static str, value: Option<String>, max: usize| match value {
            None => Ok(None),
            Some(value) => match check_text(&value, max) {
                Ok(()) => Ok(Some(value)),
                Err(reason) => Err(DesiredError::Field {
                    path: path.to_path_buf(),
                    key,
                    value: format!("{value:?}"),
                    reason,
                }),
            },
        };
        Ok(Desired {
            image,
            note: field("note", raw.note, NOTE_MAX_CHARS)?,
            by: field("by", raw.by, BY_MAX_CHARS)?,
            paused: raw.paused.unwrap_or(false),
            digest: match raw.digest {
                None => None,
                Some(value) => Some(check_digest(&value).map(|()| value.clone()).map_err(
                    |reason| DesiredError::Field {
                        path: path.to_path_buf(),
                        key: "digest",
                        value: format!("{value:?}"),
                        reason,
                    },
                )?),
            },
            generation: generation_of(text.as_bytes()),
        })
    }

    /// A `desired.toml` holding this state: `image`, then `note`, `by` and `paused` when
    /// set. Values are written with TOML's own quoting, so any text round-trips.
    pub fn render(&self) -> String {
        let mut out = format!("image = {}\n", toml_string(self.image.as_written()));
        if let Some(digest) = &self.digest {
            out.push_str(&format!("digest = {}\n", toml_string(digest)));
        }
        if let Some(note) = &self.note {
            out.push_str(&format!("note = {}\n", toml_string(note)));
        }
        if let Some(by) = &self.by {
            out.push_str(&format!("by = {}\n", toml_string(by)));
        }
        if self.paused {
            out.push_str("paused = true\n");
        }
        out
    }
}

impl fmt::Display for Desired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.image)?;
        if self.paused {
            f.write_str(" (paused)")?;
        }
        Ok(())
    }
}

fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

/// The generation of a desired file with these exact bytes: FNV-1a (64 bit) as 16 lowercase
/// hex digits.
///
/// A generation only has to change when the content changes, so that a status or a waiting
/// `deploy` can tell "this version of the file" from the previous one. Nothing is trusted to
/// it: whoever can write the file can already choose what runs, so there is nothing to gain
/// from forging a collision, and accidental collisions among the handful of versions a
/// server sees are negligible at 64 bits. FNV-1a is a few lines, stable across Rust
/// versions and platforms (unlike `DefaultHasher`), and needs no dependency.
pub fn generation_of(bytes: &[u8]) -> String {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    format!("{hash:016x}")
}

/// The rule for `note` and `by`: no control characters (newline and tab included: the
/// text ends up on one line of the audit log and the terminal), no bidi controls (they
/// reorder what is shown: a note could display as something it does not say) and no
/// Unicode line separators, at most `max_chars` characters.
pub fn check_text(text: &str, max_chars: usize) -> Result<(), String> {
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!("must not contain control characters (found {c:?})"));
    }
    if let Some(c) = text.chars().find(|&c| is_bidi_control(c)) {
        return Err(format!(
            "must not contain bidi control characters (found {c:?})"
        ));
    }
    if let Some(c) = text.chars().find(|&c| is_line_separator(c)) {
        return Err(format!(
            "must not contain a Unicode line separator (found {c:?})"
        ));
    }
    let len = text.chars().count();
    if len > max_chars {
        return Err(format!(
            "is at most {max_chars} characters, this one has {len}"
        ));
    }
    Ok(())
}

/// Bidi embeddings and overrides (U+202A-U+202E) and isolates (U+2066-U+2069).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// The Unicode line and paragraph separators (U+2028, U+2029).
pub fn is_line_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// Makes any text pass [`check_text`]: control characters, bidi controls and line
/// separators become spaces and the text is cut to `max_chars` characters.
pub fn sanitize_text(text: &str, max_chars: usize) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || is_bidi_control(c) || is_line_separator(c) {
                ' '
            } else {
                c
            }
        })
        .take(max_chars)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    const FILE: &str = "/srv/app/desired.toml";
    const HEX: &str = "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

    fn cfg() -> Config {
        Config::parse(
            "repository = \"ghcr.io/fieldtrack-tech/api\"\nallowed_repositories = [\"ghcr.io/fieldtrack-tech/worker\"]\n",
            Path::new("/srv/app/fieldtrack.toml"),
            None,
        )
        .unwrap()
    }

    fn parse(text: &str) -> Result<Desired, DesiredError> {
        Desired::parse(text, Path::new(FILE), &cfg())
    }

    /// The one-line message a user sees (its sources are part of it, as STYLE.md asks).
    fn message(err: &dyn std::error::Error) -> String {
        err.to_string()
    }

    #[test]
    fn minimal_file() {
        let d = parse("image = \"a4f91c2\"\n").unwrap();
        assert_eq!(d.image.as_written(), "a4f91c2");
        assert_eq!(
            d.image.reference(&cfg().repository),
            "ghcr.io/fieldtrack-tech/api:a4f91c2"
        );
        assert_eq!(d.note, None);
        assert_eq!(d.by, None);
        assert!(!d.paused);
        assert_eq!(d.generation.len(), 16);
        assert!(d
            .generation
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn the_contract_example() {
        let text = "image = \"a4f91c2\"      # a tag of `repository`\n# optional\nnote = \"hotfix login\"  # free text\nby = \"ci\"\npaused = false\n";
        let d = parse(text).unwrap();
        assert_eq!(d.note.as_deref(), Some("hotfix login"));
        assert_eq!(d.by.as_deref(), Some("ci"));
        assert!(!d.paused);
        assert!(parse("image = \"v1\"\npaused = true\n").unwrap().paused);
    }

    #[test]
    fn full_references_and_allowed_repositories() {
        let d = parse("image = \"ghcr.io/fieldtrack-tech/worker:v2\"\n").unwrap();
        assert_eq!(d.image.as_written(), "ghcr.io/fieldtrack-tech/worker:v2");
        let d = parse(&format!(
            "image = \"ghcr.io/fieldtrack-tech/api@sha256:{HEX}\"\n"
        ))
        .unwrap();
        assert_eq!(d.image.digest(), Some(format!("sha256:{HEX}").as_str()));
        let err = parse("image = \"other.example/evil:v1\"\n").unwrap_err();
        assert_eq!(err.kind(), DesiredErrorKind::Invalid);
        assert!(matches!(
            err,
            DesiredError::Image {
                source: ImageError::NotAllowed { .. },
                ..
            }
        ));
        let msg = message(&err);
        assert!(
            msg.starts_with(&format!(
                "{FILE}: image: image \"other.example/evil:v1\" is not allowed"
            )),
            "{msg}"
        );
    }

    #[test]
    fn invalid_image_names_file_key_and_value() {
        for value in [
            "v1;rm -rf /",
            "$(reboot)",
            "a\nb",
            "v 1",
            "",
            "..",
            ".hidden",
            "-x",
            "\u{0}",
            "é",
        ] {
            let text = format!("image = {}\n", toml_string(value));
            let err = parse(&text).expect_err(value);
            assert_eq!(err.kind(), DesiredErrorKind::Invalid, "{value:?}");
            assert!(!err.is_parse_error());
            let msg = message(&err);
            assert!(msg.starts_with(&format!("{FILE}: image: ")), "{msg}");
            assert!(msg.contains(&format!("{value:?}")), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn syntax_errors_may_be_half_written() {
        for text in [
            "image = \"a4f9",
            "image = \"a4f91c2\"\nnote = \"hot",
            "image = \"a4f91c2\"\npaused = tr",
            "image = \"a4f91c2\"\npaused",
            "imag",
            "image = ",
        ] {
            let err = parse(text).expect_err(text);
            assert!(
                matches!(err, DesiredError::Syntax { .. }),
                "{text:?}: {err:?}"
            );
            assert_eq!(err.kind(), DesiredErrorKind::Parse);
            assert!(err.is_parse_error());
            assert!(
                message(&err).starts_with(&format!("{FILE}: not valid TOML: ")),
                "{}",
                message(&err)
            );
        }
    }

    #[test]
    fn empty_or_imageless_file_may_be_half_written() {
        for text in ["", "\n", "# comment only\n", "note = \"x\"\n"] {
            let err = parse(text).expect_err(text);
            assert!(matches!(err, DesiredError::MissingImage { .. }), "{err:?}");
            assert!(err.is_parse_error());
            assert_eq!(
                message(&err),
                format!("{FILE}: image: missing; the desired file must name an image")
            );
        }
    }

    #[test]
    fn unknown_key_is_invalid_and_named() {
        let err = parse("image = \"v1\"\nimgae = \"v2\"\n").unwrap_err();
        assert!(matches!(err, DesiredError::Schema { .. }), "{err:?}");
        assert_eq!(err.kind(), DesiredErrorKind::Invalid);
        let msg = message(&err);
        assert!(
            msg.starts_with(&format!("{FILE}: imgae: unknown field `imgae`")),
            "{msg}"
        );
        let err = parse("image = \"v1\"\n[extra]\nx = 1\n").unwrap_err();
        assert!(message(&err).contains("unknown field `extra`"));
    }

    #[test]
    fn wrong_types_are_invalid() {
        for (text, key) in [
            ("image = 5\n", "image"),
            ("image = \"v1\"\npaused = \"yes\"\n", "paused"),
            ("image = \"v1\"\nnote = 3\n", "note"),
            ("image = \"v1\"\nby = [\"ci\"]\n", "by"),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.kind(), DesiredErrorKind::Invalid, "{text}");
            let msg = message(&err);
            assert!(
                msg.starts_with(&format!("{FILE}: {key}: invalid type")),
                "{msg}"
            );
        }
    }

    #[test]
    fn note_and_by_rules() {
        let ok_note = "é".repeat(NOTE_MAX_CHARS);
        let d = parse(&format!("image = \"v1\"\nnote = \"{ok_note}\"\n")).unwrap();
        assert_eq!(d.note.as_deref(), Some(ok_note.as_str()));
        let ok_by = "b".repeat(BY_MAX_CHARS);
        parse(&format!("image = \"v1\"\nby = \"{ok_by}\"\n")).unwrap();

        for (text, key) in [
            (
                format!(
                    "image = \"v1\"\nnote = \"{}\"\n",
                    "n".repeat(NOTE_MAX_CHARS + 1)
                ),
                "note",
            ),
            (
                format!(
                    "image = \"v1\"\nby = \"{}\"\n",
                    "b".repeat(BY_MAX_CHARS + 1)
                ),
                "by",
            ),
            (
                "image = \"v1\"\nnote = \"line\\nbreak\"\n".to_string(),
                "note",
            ),
            (
                "image = \"v1\"\nnote = \"tab\\there\"\n".to_string(),
                "note",
            ),
            ("image = \"v1\"\nby = \"ci\\u0000\"\n".to_string(), "by"),
            (
                "image = \"v1\"\nby = \"esc\\u001b[31m\"\n".to_string(),
                "by",
            ),
            (
                "image = \"v1\"\nnote = \"\"\"\nmulti\nline\"\"\"\n".to_string(),
                "note",
            ),
            // Bidi controls reorder what a terminal shows; line separators break a line.
            (
                "image = \"v1\"\nnote = \"deploy \\u202Eolleh\"\n".to_string(),
                "note",
            ),
            (
                "image = \"v1\"\nby = \"ci\\u2066x\\u2069\"\n".to_string(),
                "by",
            ),
            ("image = \"v1\"\nnote = \"a\\u2028b\"\n".to_string(), "note"),
            ("image = \"v1\"\nby = \"a\\u2029b\"\n".to_string(), "by"),
        ] {
            let err = parse(&text).expect_err(&text);
            assert!(
                matches!(err, DesiredError::Field { key: k, .. } if k == key),
                "{err:?}"
            );
            assert_eq!(err.kind(), DesiredErrorKind::Invalid);
            let msg = message(&err);
            assert!(
                msg.starts_with(&format!("{FILE}: {key}: invalid value \"")),
                "{msg}"
            );
            assert!(!msg.contains('\n') && !msg.contains('\u{1b}'), "{msg:?}");
        }
    }

    #[test]
    fn render_round_trips() {
        let cfg = cfg();
        let image =
            |v: &str| ImageRef::parse(v, &cfg.repository, &cfg.allowed_repositories).unwrap();
        let cases = [
            Desired::new(image("a4f91c2"), None, None, false),
            Desired::new(image("v1"), Some("hotfix login"), Some("ci"), false),
            Desired::new(
                image("v1"),
                Some("say \"hi\" it's \\ fine # not a comment"),
                None,
                true,
            ),
            Desired::new(image("v1"), Some("both ' and \""), Some("o'brien"), false),
            Desired::new(image("v1"), Some("ünïcödé ✓"), Some(""), false),
            Desired::new(
                image(&format!("ghcr.io/fieldtrack-tech/api:v1@sha256:{HEX}")),
                None,
                Some("fieldtrack"),
                false,
            ),
            Desired::new(image(&format!("sha256:{HEX}")), Some(""), None, true),
        ];
        for desired in cases {
            let text = desired.render();
            let back = Desired::parse(&text, Path::new(FILE), &cfg)
                .unwrap_or_else(|e| panic!("{text}: {}", message(&e)));
            assert_eq!(back, desired, "{text}");
            assert_eq!(back.generation, generation_of(text.as_bytes()));
        }
    }

    #[test]
    fn render_layout() {
        let cfg = cfg();
        let image = ImageRef::parse("a4f91c2", &cfg.repository, &[]).unwrap();
        let d = Desired::new(image.clone(), None, None, false);
        assert_eq!(d.render(), "image = \"a4f91c2\"\n");
        let d = Desired::new(image, Some("hotfix login"), Some("ci"), true);
        assert_eq!(
            d.render(),
            "image = \"a4f91c2\"\nnote = \"hotfix login\"\nby = \"ci\"\npaused = true\n"
        );
    }

    #[test]
    fn new_sanitizes_generated_text() {
        let cfg = cfg();
        let image = ImageRef::parse("v2", &cfg.repository, &[]).unwrap();
        let long = "x".repeat(NOTE_MAX_CHARS + 50);
        let d = Desired::new(
            image,
            Some("health failed:\nconnection refused\t(3 probes)"),
            Some(&long),
            false,
        );
        assert_eq!(
            d.note.as_deref(),
            Some("health failed: connection refused (3 probes)")
        );
        assert_eq!(d.by.as_ref().map(|b| b.chars().count()), Some(BY_MAX_CHARS));
        let back = Desired::parse(&d.render(), Path::new(FILE), &cfg).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn generation_follows_content() {
        let a = parse("image = \"v1\"\n").unwrap().generation;
        assert_eq!(a, parse("image = \"v1\"\n").unwrap().generation);
        // Same meaning, different bytes: a new generation all the same (the file changed).
        assert_ne!(a, parse("image = \"v1\" # again\n").unwrap().generation);
        assert_ne!(a, parse("image = \"v2\"\n").unwrap().generation);
        assert_ne!(
            a,
            parse("image = \"v1\"\npaused = true\n").unwrap().generation
        );
    }

    #[test]
    fn generation_is_fnv1a_64() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(generation_of(b""), "cbf29ce484222325");
        assert_eq!(generation_of(b"a"), "af63dc4c8601ec8c");
        assert_eq!(generation_of(b"foobar"), "85944171f73967e8");
    }

    #[test]
    fn text_helpers() {
        assert_eq!(check_text("fine", 10), Ok(()));
        assert!(check_text("a\u{7f}", 10).is_err());
        assert!(check_text("a\u{85}", 10).is_err());
        assert!(check_text("abc", 2).is_err());
        for c in ('\u{202a}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            let err = check_text(&format!("a{c}b"), 10).unwrap_err();
            assert!(err.contains("bidi"), "{c:?}: {err}");
        }
        for c in ['\u{2028}', '\u{2029}'] {
            let err = check_text(&format!("a{c}b"), 10).unwrap_err();
            assert!(err.contains("line separator"), "{c:?}: {err}");
        }
        // Neighbours that are harmless stay allowed: zero-width joiner (emoji), LRM's range.
        assert_eq!(check_text("👩\u{200d}💻 ok", 10), Ok(()));
        assert_eq!(sanitize_text("a\nb\tc", 10), "a b c");
        assert_eq!(sanitize_text("a\u{202e}b\u{2028}c", 10), "a b c");
        assert_eq!(sanitize_text("éééé", 2), "éé");
    }

    #[test]
    fn load_checks_safety_and_reads() {
        let cfg = cfg();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("desired.toml");

        let err = Desired::load(&file, &cfg).unwrap_err();
        assert_eq!(err.kind(), DesiredErrorKind::Io);
        assert!(message(&err).contains("cannot read desired file"));

        fs::write(&file, "image = \"v1\"\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let d = Desired::load(&file, &cfg).unwrap();
        assert_eq!(d.image.as_written(), "v1");
        assert_eq!(d.generation, generation_of(b"image = \"v1\"\n"));

        fs::set_permissions(&file, fs::Permissions::from_mode(0o666)).unwrap();
        let err = Desired::load(&file, &cfg).unwrap_err();
        assert_eq!(err.kind(), DesiredErrorKind::Unsafe);
        assert!(message(&err).contains("world-writable"));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();

        let outside = tempfile::tempdir().unwrap();
        let real = outside.path().join("desired.toml");
        fs::write(&real, "image = \"v1\"\n").unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = Desired::load(&link, &cfg).unwrap_err();
        assert_eq!(err.kind(), DesiredErrorKind::Unsafe);
        assert!(message(&err).contains("outside its folder"));

        let inside = dir.path().join("current.toml");
        std::os::unix::fs::symlink("desired.toml", &inside).unwrap();
        assert_eq!(Desired::load(&inside, &cfg).unwrap(), d);

        fs::write(&file, [0xff, b'\n']).unwrap();
        assert_eq!(
            Desired::load(&file, &cfg).unwrap_err().kind(),
            DesiredErrorKind::Io
        );
    }

    /// CI's user may rename anything over the desired file at any instant: a FIFO that
    /// arrives between a check by name and an open by name blocks that open for ever.
    #[test]
    fn a_fifo_renamed_over_the_desired_file_in_a_loop_never_blocks_a_reader() {
        use crate::state::test_support::{mkfifo, within_5s};
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("desired.toml");
        fs::write(&file, "image = \"v1\"\n").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (dir, file, stop) = (dir.path().to_path_buf(), file.clone(), stop.clone());
            std::thread::spawn(move || {
                let (fifo, good) = (dir.join("fifo.tmp"), dir.join("good.tmp"));
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    mkfifo(&fifo);
                    fs::rename(&fifo, &file).unwrap();
                    fs::write(&good, "image = \"v2\"\n").unwrap();
                    fs::rename(&good, &file).unwrap();
                }
            })
        };
        let reader_file = file.clone();
        let kinds = within_5s("reads of a desired file swapped with a FIFO", move || {
            let cfg = cfg();
            let mut kinds = std::collections::BTreeSet::new();
            let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while std::time::Instant::now() < until {
                match Desired::load(&reader_file, &cfg) {
                    Ok(d) => kinds.insert(format!("ok {}", d.image.as_written())),
                    Err(e) => kinds.insert(format!("{:?}", e.kind())),
                };
            }
            kinds
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        // Both were seen: the FIFO refused as unsafe (not a regular file), v2 read.
        assert!(kinds.contains("Unsafe"), "{kinds:?}");
        assert!(kinds.contains("ok v2"), "{kinds:?}");
    }

    #[test]
    fn a_huge_file_a_socket_or_a_directory_at_the_desired_path_is_refused_unread() {
        let cfg = cfg();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("desired.toml");
        let huge = fs::File::create(&file).unwrap();
        huge.set_len(1 << 30).unwrap();
        drop(huge);
        let err = Desired::load(&file, &cfg).unwrap_err();
        assert!(message(&err).contains("larger than"), "{}", message(&err));
        fs::remove_file(&file).unwrap();

        let _socket = std::os::unix::net::UnixListener::bind(&file).unwrap();
        let err = Desired::load(&file, &cfg).unwrap_err();
        assert_eq!(err.kind(), DesiredErrorKind::Unsafe, "{}", message(&err));
        fs::remove_file(&file).unwrap();

        fs::create_dir(&file).unwrap();
        let err = Desired::load(&file, &cfg).unwrap_err();
        assert_eq!(err.kind(), DesiredErrorKind::Unsafe, "{}", message(&err));
    }

    #[test]
    fn image_error_is_one_line_that_also_keeps_its_source() {
        let err = parse("image = \"v 1\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{FILE}: image: invalid image \"v 1\": ' ' cannot appear in an image reference"
            )
        );
        assert!(matches!(
            err.source().and_then(|s| s.downcast_ref::<ImageError>()),
            Some(ImageError::ForbiddenCharacter { found: ' ', .. })
        ));
    }

    #[test]
    fn a_pinned_digest_is_run_while_the_history_keeps_the_tag() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let text = format!("image = \"v2\"\ndigest = \"{digest}\"\n");
        let d = Desired::parse(&text, Path::new(FILE), &cfg()).unwrap();
        assert_eq!(d.image.as_written(), "v2");
        assert_eq!(
            d.reference(&cfg()),
            format!("ghcr.io/fieldtrack-tech/api:v2@{digest}")
        );
        assert_eq!(d.render(), text);
        let unpinned = Desired::new(d.image.clone(), None, None, false);
        let pinned = unpinned.clone().pinned(Some(digest.clone()));
        assert_ne!(unpinned.generation, pinned.generation);
        assert_eq!(
            Desired::parse(&pinned.render(), Path::new(FILE), &cfg()).unwrap(),
            pinned
        );
    }

    #[test]
    fn a_malformed_digest_is_refused_naming_the_key() {
        for bad in [
            "sha256:abc",
            "md5:00",
            &format!("sha256:{}", "AB".repeat(32)),
        ] {
            let text = format!("image = \"v2\"\ndigest = \"{bad}\"\n");
            let err = Desired::parse(&text, Path::new(FILE), &cfg()).unwrap_err();
            assert_eq!(err.kind(), DesiredErrorKind::Invalid, "{bad}");
            assert!(err.to_string().contains("digest"), "{err}");
        }
    }
}
