//! The container's env file (`container.env_file`): `KEY=value` lines handed to the
//! container. Values are secrets: they are never logged, and errors name the line number,
//! never its content. Like the config, the file is believed only when root or the user
//! running fieldtrack alone may change it (checked at every read: the daemon runs for
//! months, and a folder's rights may change meanwhile).

use std::path::Path;

use crate::config::safety::{self, SafetyError};

/// Errors reading the env file.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// The file exists but cannot be read (or is over the size cap, or not UTF-8).
    #[error("cannot read env file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Someone other than root and this user may change the file or a folder above it.
    #[error("env file: {0}")]
    Untrusted(#[source] SafetyError),
    /// A line is not `KEY=value` with a valid key.
    #[error(
        "env file {path}, line {line}: expected KEY=value with KEY made of letters, digits and _"
    )]
    Malformed { path: String, line: usize },
}

/// Reads the env file; a missing file is no env at all (the key is optional).
pub fn read(path: &Path) -> Result<Vec<String>, EnvFileError> {
    let read_error = |source| EnvFileError::Read {
        path: path.display().to_string(),
        source,
    };
    match safety::check_trusted(path) {
        Ok(()) => {}
        Err(SafetyError::Inspect { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(Vec::new())
        }
        Err(SafetyError::Inspect { source, .. }) => return Err(read_error(source)),
        Err(other) => return Err(EnvFileError::Untrusted(other)),
    }
    let text = safety::read_small_file(path).map_err(read_error)?;
    parse(&text).map_err(|line| EnvFileError::Malformed {
        path: path.display().to_string(),
        line,
    })
}

/// Parses `KEY=value` lines, skipping blanks and `#` comments and an optional `export `.
/// Returns the number of the first bad line on error.
pub fn parse(text: &str) -> Result<Vec<String>, usize> {
    let mut vars = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line.split_once('=').ok_or(i + 1)?;
        let key = key.trim();
        let valid = !key.is_empty()
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(i + 1);
        }
        let value = value.trim_end_matches('\r');
        let value = match (value.strip_prefix('"'), value.strip_prefix('\'')) {
            (Some(v), _) if v.ends_with('"') => &v[..v.len() - 1],
            (_, Some(v)) if v.ends_with('\'') => &v[..v.len() - 1],
            _ => value,
        };
        vars.push(format!("{key}={value}"));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_quoted_exported_and_skips_comments() {
        let text = "# db\nDATABASE_URL=postgres://u:p@h/db\n\nexport A='x y'\nB=\"q\"\nEMPTY=\n";
        assert_eq!(
            parse(text).unwrap(),
            vec!["DATABASE_URL=postgres://u:p@h/db", "A=x y", "B=q", "EMPTY="]
        );
    }

    #[test]
    fn bad_lines_are_reported_by_number_only() {
        assert_eq!(parse("A=1\nnot a pair\n"), Err(2));
        assert_eq!(parse("1A=x\n"), Err(1));
        assert_eq!(parse("A-B=x\n"), Err(1));
        let err = EnvFileError::Malformed {
            path: "/srv/.env".into(),
            line: 2,
        };
        assert!(!err.to_string().contains("not a pair"));
    }

    #[test]
    fn a_missing_file_is_no_env() {
        assert!(read(Path::new("/nonexistent/.env")).unwrap().is_empty());
    }

    #[test]
    fn a_file_others_may_change_is_refused_without_its_content() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".env");
        std::fs::write(&path, "TOKEN=s3cr3t\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&path).unwrap(), vec!["TOKEN=s3cr3t"]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o620)).unwrap();
        let err = read(&path).unwrap_err();
        assert!(matches!(err, EnvFileError::Untrusted(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("chmod go-w"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }
}
