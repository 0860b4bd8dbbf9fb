//! Image references, validated: the grammar shared by the config (`repository`,
//! `allowed_repositories`) and the desired file's `image` and `digest`.
//!
//! Whoever can write the desired file chooses what runs, so the value is checked by hand
//! against Docker's reference grammar (no regex engine, no surprises) and against the
//! repositories the config allows. What the file said is kept verbatim: the history file
//! records it exactly as written, so a rollback writes back the same text.

use std::fmt;

use serde::{Serialize, Serializer};

/// Longest tag Docker accepts.
pub const MAX_TAG_LEN: usize = 128;
/// Longest repository name Docker accepts.
pub const MAX_REPOSITORY_LEN: usize = 255;

const DIGEST_ALGORITHM: &str = "sha256";
const DIGEST_HEX_LEN: usize = 64;

/// Why an image value was rejected. Every message names the value with `{:?}`, so a newline
/// or a NUL shows as `\n` or `\0` instead of breaking the log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The value is empty.
    #[error("invalid image \"\": it is empty")]
    Empty,
    /// The value has a character no image reference may contain.
    #[error("invalid image {value:?}: {found:?} cannot appear in an image reference")]
    ForbiddenCharacter { value: String, found: char },
    /// A bare tag breaks the tag grammar.
    #[error("invalid image tag {value:?}: {reason}")]
    InvalidTag { value: String, reason: String },
    /// A full reference breaks the reference grammar.
    #[error("invalid image reference {value:?}: {reason}")]
    InvalidReference { value: String, reason: String },
    /// The digest part is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid image digest in {value:?}: {reason}")]
    InvalidDigest { value: String, reason: String },
    /// A well-formed reference to a repository the config does not allow.
    #[error(
        "image {value:?} is not allowed: repository {repository:?} is neither the configured \
         repository nor listed in allowed_repositories"
    )]
    NotAllowed { value: String, repository: String },
}

/// A validated image: what the desired file asked to run.
///
/// The fields are private so that an `ImageRef` can only come from [`ImageRef::parse`]:
/// holding one means the value passed every check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    written: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Kind {
    /// `a4f91c2`: a tag of the configured repository.
    Tag,
    /// `sha256:…`: a digest of the configured repository.
    Digest,
    /// `repo:tag`, `repo@sha256:…` or `repo:tag@sha256:…`.
    Full {
        repository: String,
        tag: Option<String>,
        digest: Option<String>,
    },
}

impl ImageRef {
    /// Validates `value` as written in the desired file.
    ///
    /// Accepted: a bare tag of `repository` (`a4f91c2`), a bare digest of it
    /// (`sha256:<64 hex>`), or a full reference `repo:tag`, `repo@sha256:<64 hex>` or
    /// `repo:tag@sha256:<64 hex>` whose `repo` is `repository` or one of `allowed`
    /// (compared as written: `docker.io/library/nginx` and `nginx` are different names).
    pub fn parse(
        value: &str,
        repository: &str,
        allowed: &[String],
    ) -> Result<ImageRef, ImageError> {
        if value.is_empty() {
            return Err(ImageError::Empty);
        }
        if let Some(found) = value.chars().find(|&c| !is_reference_char(c)) {
            return Err(ImageError::ForbiddenCharacter {
                value: value.to_owned(),
                found,
            });
        }
        let written = value.to_owned();

        if let Some(hex) = value.strip_prefix("sha256:") {
            if !value.contains(['/', '@']) {
                check_digest_hex(hex).map_err(|reason| ImageError::InvalidDigest {
                    value: written.clone(),
                    reason,
                })?;
                return Ok(ImageRef {
                    written,
                    kind: Kind::Digest,
                });
            }
        }

        if !value.contains(['/', ':', '@']) {
            check_tag(value).map_err(|reason| ImageError::InvalidTag {
                value: written.clone(),
                reason,
            })?;
            return Ok(ImageRef {
                written,
                kind: Kind::Tag,
            });
        }

        let (name, digest) = match value.split_once('@') {
            Some((name, digest)) => {
                check_digest(digest).map_err(|reason| ImageError::InvalidDigest {
                    value: written.clone(),
                    reason,
                })?;
                (name, Some(digest.to_owned()))
            }
            None => (value, None),
        };
        let invalid = |reason: String| ImageError::InvalidReference {
            value: written.clone(),
            reason,
        };
        // The tag separator is the last ':' after the last '/': in
        // `127.0.0.1:5000/team/app:v1` the first ':' belongs to the registry's port.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (repo, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        check_repository(repo)
            .map_err(|reason| invalid(format!("repository {repo:?} {reason}")))?;
        if let Some(tag) = tag {
            check_tag(tag).map_err(|reason| invalid(format!("tag {tag:?}: {reason}")))?;
        }
        if tag.is_none() && digest.is_none() {
            return Err(invalid(
                "a full reference needs a tag (\":v1\") or a digest (\"@sha256:...\")".into(),
            ));
        }
        if repo != repository && !allowed.iter().any(|a| a == repo) {
            return Err(ImageError::NotAllowed {
                value: written,
                repository: repo.to_owned(),
            });
        }
        Ok(ImageRef {
            kind: Kind::Full {
                repository: repo.to_owned(),
                tag: tag.map(str::to_owned),
                digest,
            },
            written,
        })
    }

    /// The full reference to pull and run, e.g. `ghcr.io/fieldtrack-tech/api:a4f91c2`.
    /// `repository` is the configured repository, used when the file gave a bare tag or
    /// digest.
    pub fn reference(&self, repository: &str) -> String {
        match &self.kind {
            Kind::Tag => format!("{repository}:{}", self.written),
            Kind::Digest => format!("{repository}@{}", self.written),
            Kind::Full { .. } => self.written.clone(),
        }
    }

    /// Exactly what the desired file said; this is what the history file records.
    pub fn as_written(&self) -> &str {
        &self.written
    }

    /// The repository this image comes from: its own for a full reference, else
    /// `configured`.
    pub fn repository<'a>(&'a self, configured: &'a str) -> &'a str {
        match &self.kind {
            Kind::Full { repository, .. } => repository,
            Kind::Tag | Kind::Digest => configured,
        }
    }

    /// The tag, if the value has one.
    pub fn tag(&self) -> Option<&str> {
        match &self.kind {
            Kind::Tag => Some(&self.written),
            Kind::Digest => None,
            Kind::Full { tag, .. } => tag.as_deref(),
        }
    }

    /// The digest (`sha256:…`), if the value pins one.
    pub fn digest(&self) -> Option<&str> {
        match &self.kind {
            Kind::Tag => None,
            Kind::Digest => Some(&self.written),
            Kind::Full { digest, .. } => digest.as_deref(),
        }
    }

    /// Whether the desired file gave a full reference rather than a bare tag or digest.
    pub fn is_full_reference(&self) -> bool {
        matches!(self.kind, Kind::Full { .. })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

impl Serialize for ImageRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.written)
    }
}

/// Every character that may appear somewhere in a reference. Checked first so that hostile
/// values (`$(reboot)`, `v1;rm -rf /`, control characters, unicode) get the plainest error.
fn is_reference_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@')
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
pub fn check_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let Some(first) = chars.next() else {
        return Err("a tag cannot be empty".into());
    };
    if !(first.is_ascii_alphanumeric() || first == '_') {
        return Err(format!(
            "a tag must start with a letter, digit or '_', not {first:?}"
        ));
    }
    if let Some(c) = chars.find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
        return Err(format!("{c:?} cannot appear in a tag"));
    }
    let len = tag.chars().count();
    if len > MAX_TAG_LEN {
        return Err(format!(
            "a tag is at most {MAX_TAG_LEN} characters, this one has {len}"
        ));
    }
    Ok(())
}

/// `sha256:` followed by 64 lowercase hex digits; the `Err` says what is wrong.
pub fn check_digest(digest: &str) -> Result<(), String> {
    match digest.split_once(':') {
        Some((DIGEST_ALGORITHM, hex)) => check_digest_hex(hex),
        Some((algorithm, _)) => Err(format!(
            "only sha256 digests are supported, not {algorithm:?}"
        )),
        None => Err("a digest looks like \"sha256:<64 hex digits>\"".into()),
    }
}

fn check_digest_hex(hex: &str) -> Result<(), String> {
    if hex.len() != DIGEST_HEX_LEN {
        return Err(format!(
            "a sha256 digest has {DIGEST_HEX_LEN} hex digits, this one has {}",
            hex.len()
        ));
    }
    if !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return Err("a sha256 digest is written in lowercase hex digits (0-9, a-f)".into());
    }
    Ok(())
}

/// Checks a repository name (no tag, no digest) against Docker's grammar, lowercase only:
/// an optional registry `host[:port]` (recognised, as Docker does, by a '.' or ':' in the
/// first of several components, or by being `localhost`), then path components
/// `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*` separated by '/'.
///
/// The `Err` is a reason to append after the name, e.g. "must be lowercase".
pub fn check_repository(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_REPOSITORY_LEN {
        return Err(format!("is longer than {MAX_REPOSITORY_LEN} characters"));
    }
    if let Some(c) = name.chars().find(|&c| !is_reference_char(c)) {
        return Err(format!("contains {c:?}"));
    }
    if name.contains('@') {
        return Err("must not contain a digest (\"@...\")".into());
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("must be lowercase".into());
    }
    let components: Vec<&str> = name.split('/').collect();
    let mut path = &components[..];
    if components.len() > 1 {
        let first = components[0];
        if first.contains(['.', ':']) || first == "localhost" {
            check_registry(first)?;
            path = &components[1..];
        }
    }
    for component in path {
        if component.contains(':') {
            return Err("must not contain a tag (\":...\")".into());
        }
        check_path_component(component)?;
    }
    Ok(())
}

/// `host[:port]`, host being dot-separated labels `[a-z0-9]([a-z0-9-]*[a-z0-9])?`.
fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Err(format!("has an invalid registry host {host:?}"));
    }
    if let Some(port) = port {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.chars().all(|c| c.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            return Err(format!("has an invalid registry port {port:?}"));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`
fn check_path_component(component: &str) -> Result<(), String> {
    if component.is_empty() {
        return Err("has an empty path component (\"//\" or a leading or trailing '/')".into());
    }
    let bad = || {
        Err(format!(
            "has an invalid path component {component:?}: use lowercase letters and digits, \
             separated by '.', '_', '__' or dashes"
        ))
    };
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !component.starts_with(alnum) || !component.ends_with(alnum) {
        return bad();
    }
    // Split into runs of separators and check each run is one of the allowed forms.
    for run in component.split(alnum).filter(|run| !run.is_empty()) {
        let ok = run == "." || run == "_" || run == "__" || run.chars().all(|c| c == '-');
        if !ok {
            return bad();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "ghcr.io/fieldtrack-tech/api";
    const HEX: &str = "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

    fn parse(value: &str) -> Result<ImageRef, ImageError> {
        ImageRef::parse(value, REPO, &[])
    }

    fn parse_allowed(value: &str, allowed: &[&str]) -> Result<ImageRef, ImageError> {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        ImageRef::parse(value, REPO, &allowed)
    }

    #[test]
    fn bare_tag_is_a_tag_of_the_repository() {
        let image = parse("a4f91c2").unwrap();
        assert_eq!(image.as_written(), "a4f91c2");
        assert_eq!(image.reference(REPO), "ghcr.io/fieldtrack-tech/api:a4f91c2");
        assert_eq!(image.tag(), Some("a4f91c2"));
        assert_eq!(image.digest(), None);
        assert_eq!(image.repository(REPO), REPO);
        assert!(!image.is_full_reference());
        assert_eq!(image.to_string(), "a4f91c2");
    }

    #[test]
    fn tag_grammar_edges() {
        for ok in ["v1", "_x", "1.2.3-rc.1", "latest", "A_b-C.d", "x"] {
            parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let max = "a".repeat(MAX_TAG_LEN);
        parse(&max).unwrap();
        let too_long = "a".repeat(MAX_TAG_LEN + 1);
        let err = parse(&too_long).unwrap_err();
        assert!(matches!(err, ImageError::InvalidTag { .. }), "{err:?}");
        assert!(err.to_string().contains(&too_long));
        assert!(err.to_string().contains("129"));
    }

    #[test]
    fn hostile_values_are_rejected_naming_the_value() {
        let hostile = [
            "v1;rm -rf /",
            "$(reboot)",
            "a\nb",
            "v 1",
            "",
            "..",
            ".hidden",
            "-x",
            "Ghcr.io/Fieldtrack/API:v1",
            "other.example/evil:v1",
            "repo@sha256:abc",
            "ghcr.io/fieldtrack-tech/api@sha256:abc",
            "ghcr.io/fieldtrack-tech/api@md5:d41d8cd98f00b204e9800998ecf8427e",
            "repo@md5:d41d8cd98f00b204e9800998ecf8427e",
            "vé",
            "v1\u{0}",
            "\u{0}",
            "v1\r",
            "v1\t",
            "`id`",
            "v1|cat",
            "v1&&x",
            "v1>out",
            "'v1'",
            "\"v1\"",
            "v1\\x",
            "💥",
            "v\u{200b}1",
        ];
        for value in hostile {
            let err = parse(value).expect_err(value);
            let msg = err.to_string();
            let shown = format!("{value:?}");
            assert!(
                msg.contains(&shown),
                "{value:?}: message {msg:?} does not name it"
            );
            assert!(!msg.contains('\n') && !msg.contains('\0'), "{msg:?}");
        }
        let long = "a".repeat(129);
        assert!(parse(&long).unwrap_err().to_string().contains(&long));
    }

    #[test]
    fn hostile_value_errors_say_why() {
        assert!(matches!(
            parse("v1;rm -rf /").unwrap_err(),
            ImageError::ForbiddenCharacter { found: ';', .. }
        ));
        assert!(matches!(
            parse("a\nb").unwrap_err(),
            ImageError::ForbiddenCharacter { found: '\n', .. }
        ));
        assert_eq!(parse("").unwrap_err(), ImageError::Empty);
        assert!(matches!(
            parse("..").unwrap_err(),
            ImageError::InvalidTag { .. }
        ));
        assert!(matches!(
            parse(".hidden").unwrap_err(),
            ImageError::InvalidTag { .. }
        ));
        assert!(matches!(
            parse("-x").unwrap_err(),
            ImageError::InvalidTag { .. }
        ));
        let upper = parse("Ghcr.io/Fieldtrack/API:v1").unwrap_err();
        assert!(upper.to_string().contains("lowercase"), "{upper}");
        let other = parse("other.example/evil:v1").unwrap_err();
        assert_eq!(
            other,
            ImageError::NotAllowed {
                value: "other.example/evil:v1".into(),
                repository: "other.example/evil".into()
            }
        );
        assert!(other.to_string().contains("not allowed"));
        let md5 = parse("repo@md5:d41d8cd98f00b204e9800998ecf8427e").unwrap_err();
        assert!(md5.to_string().contains("only sha256"), "{md5}");
        let short = parse("repo@sha256:abc").unwrap_err();
        assert!(short.to_string().contains("64 hex digits"), "{short}");
    }

    #[test]
    fn nul_and_newline_show_escaped() {
        let msg = parse("a\nb").unwrap_err().to_string();
        assert!(msg.contains(r#""a\nb""#), "{msg}");
        let msg = parse("v1\0").unwrap_err().to_string();
        assert!(msg.contains(r#""v1\0""#), "{msg}");
    }

    #[test]
    fn full_reference_to_the_configured_repository() {
        let image = parse("ghcr.io/fieldtrack-tech/api:a4f91c2").unwrap();
        assert_eq!(image.as_written(), "ghcr.io/fieldtrack-tech/api:a4f91c2");
        assert_eq!(image.reference(REPO), "ghcr.io/fieldtrack-tech/api:a4f91c2");
        assert_eq!(image.tag(), Some("a4f91c2"));
        assert_eq!(image.repository("ignored"), REPO);
        assert!(image.is_full_reference());
    }

    #[test]
    fn full_reference_without_tag_or_digest_is_rejected() {
        let err = parse(REPO).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidReference { .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("needs a tag"));
    }

    #[test]
    fn digest_forms() {
        let bare = parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(bare.digest(), Some(format!("sha256:{HEX}").as_str()));
        assert_eq!(bare.tag(), None);
        assert_eq!(bare.reference(REPO), format!("{REPO}@sha256:{HEX}"));
        assert_eq!(bare.as_written(), format!("sha256:{HEX}"));

        let full = parse(&format!("{REPO}@sha256:{HEX}")).unwrap();
        assert_eq!(full.reference(REPO), format!("{REPO}@sha256:{HEX}"));
        assert_eq!(full.tag(), None);
        assert_eq!(full.digest(), Some(format!("sha256:{HEX}").as_str()));

        let both = parse(&format!("{REPO}:v1@sha256:{HEX}")).unwrap();
        assert_eq!(both.tag(), Some("v1"));
        assert_eq!(both.digest(), Some(format!("sha256:{HEX}").as_str()));
        assert_eq!(both.reference(REPO), format!("{REPO}:v1@sha256:{HEX}"));
    }

    #[test]
    fn bad_digests() {
        let upper = HEX.to_uppercase();
        for value in [
            format!("sha256:{upper}"),
            format!("sha256:{}", &HEX[1..]),
            format!("sha256:{HEX}0"),
            format!("{REPO}@sha256:{}g", &HEX[1..]),
            format!("{REPO}@sha512:{HEX}"),
            format!("{REPO}@{HEX}"),
            format!("{REPO}@"),
            format!("{REPO}:v1@sha256:{HEX}@sha256:{HEX}"),
        ] {
            let err = parse(&value).expect_err(&value);
            assert!(err.to_string().contains(&format!("{value:?}")), "{err}");
        }
    }

    #[test]
    fn registry_with_port() {
        let repo = "127.0.0.1:5000/team/app";
        let image = ImageRef::parse("127.0.0.1:5000/team/app:v1", repo, &[]).unwrap();
        assert_eq!(image.tag(), Some("v1"));
        assert_eq!(image.repository("x"), repo);
        assert_eq!(image.reference(repo), "127.0.0.1:5000/team/app:v1");

        let bare = ImageRef::parse("v2", repo, &[]).unwrap();
        assert_eq!(bare.reference(repo), "127.0.0.1:5000/team/app:v2");

        let digest = ImageRef::parse(&format!("{repo}@sha256:{HEX}"), repo, &[]).unwrap();
        assert_eq!(digest.tag(), None);

        // Without a tag, the port must not be mistaken for one.
        let err = ImageRef::parse(repo, repo, &[]).unwrap_err();
        assert!(err.to_string().contains("needs a tag"), "{err}");

        let local = "localhost:5000/app";
        ImageRef::parse("localhost:5000/app:v1", local, &[]).unwrap();
    }

    #[test]
    fn allowed_repositories() {
        let image = parse_allowed("other.example/evil:v1", &["other.example/evil"]).unwrap();
        assert_eq!(image.repository(REPO), "other.example/evil");
        assert_eq!(image.reference(REPO), "other.example/evil:v1");
        // Exact match only: a prefix or a sibling is not allowed.
        for value in [
            "other.example/evil/sub:v1",
            "other.example/evi:v1",
            "ghcr.io/fieldtrack-tech/api2:v1",
            "ghcr.io/fieldtrack-tech:v1",
            "docker.io/ghcr.io/fieldtrack-tech/api:v1",
        ] {
            let err = parse_allowed(value, &["other.example/evil"]).unwrap_err();
            assert!(
                matches!(err, ImageError::NotAllowed { .. }),
                "{value}: {err:?}"
            );
        }
    }

    #[test]
    fn single_component_reference_needs_allowing() {
        let err = parse("nginx:1.25").unwrap_err();
        assert!(matches!(err, ImageError::NotAllowed { .. }));
        parse_allowed("nginx:1.25", &["nginx"]).unwrap();
    }

    #[test]
    fn repository_grammar() {
        for ok in [
            "api",
            "ghcr.io/fieldtrack-tech/api",
            "localhost/app",
            "localhost:5000/app",
            "127.0.0.1:5000/team/app",
            "registry.example.com/a/b/c",
            "a__b/c.d/e_f/g--h/i---j",
            "my-registry.example:443/x",
            "docker.io/library/nginx",
        ] {
            check_repository(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("", "empty"),
            ("Api", "lowercase"),
            ("ghcr.io/Fieldtrack/api", "lowercase"),
            ("GHCR.IO/x/api", "lowercase"),
            ("api:v1", "tag"),
            ("ghcr.io/x/api:v1", "tag"),
            ("localhost:5000", "tag"),
            ("ghcr.io/x/api@sha256:00", "digest"),
            ("a//b", "empty path component"),
            ("/a", "empty path component"),
            ("a/", "empty path component"),
            ("a/-b", "invalid path component"),
            ("a/b-", "invalid path component"),
            ("a/b._c", "invalid path component"),
            ("a/b___c", "invalid path component"),
            ("a/b..c", "invalid path component"),
            ("-reg.io/a", "registry host"),
            ("reg..io/a", "registry host"),
            ("reg.io:/a", "registry port"),
            ("reg.io:99999/a", "registry port"),
            ("reg.io:0/a", "registry port"),
            ("reg.io:50x/a", "registry port"),
            ("a b", "contains"),
        ] {
            let err = check_repository(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let long = format!("a/{}", "b".repeat(MAX_REPOSITORY_LEN));
        assert!(check_repository(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn serializes_as_written() {
        let image = parse("ghcr.io/fieldtrack-tech/api:v1").unwrap();
        #[derive(Serialize)]
        struct Wrapper {
            image: ImageRef,
        }
        let text = toml::to_string(&Wrapper { image }).unwrap();
        assert_eq!(text, "image = \"ghcr.io/fieldtrack-tech/api:v1\"\n");
    }

    #[test]
    fn equal_when_written_the_same() {
        assert_eq!(parse("v1").unwrap(), parse("v1").unwrap());
        assert_ne!(
            parse("v1").unwrap(),
            parse("ghcr.io/fieldtrack-tech/api:v1").unwrap()
        );
    }
}
