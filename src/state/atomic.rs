//! Atomic file replacement, the one way fieldtrack writes a file that matters: history,
//! status, by-hand.json, the desired file when the CLI rewrites it, the nginx upstream file.
//!
//! The new content goes to a temp file in the same folder (a rename is only atomic within one
//! file system), is fsynced, then renamed over the target, and the folder is fsynced so the
//! rename itself survives a power cut. A crash at any instant leaves the old file or the new
//! one, never a mix, and at worst a stray temp file that nothing reads.
//!
//! Nothing is followed through a symlink: the temp file is created with `O_EXCL` and
//! `O_NOFOLLOW`, the file being replaced is looked at with `lstat`, and the rename replaces
//! whatever is at the name. A symlink at the name is either replaced by the new file or
//! refused, as the caller says ([`WriteOptions`]); something that is not a regular file (a
//! folder, a FIFO, a device) is always refused.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::file::Refused;

/// Mode of a new file written by [`write_atomic`].
const NEW_FILE_MODE: u32 = 0o644;

/// The mode the new file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The mode and owner of the regular file replaced (where this user may give a file
    /// away); `new` when there was none.
    Keep { new: u32 },
    /// Exactly this mode, whatever the old file had: a file only fieldtrack reads.
    Exactly(u32),
}

/// How [`write_atomic_with`] treats what it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    pub mode: Mode,
    /// Refuse a symlink at the name instead of replacing it. For files that fieldtrack alone
    /// writes, where a symlink can only be a mistake or a trap, and for the nginx upstream
    /// file, where replacing an operator's link would leave nginx reading its stale target.
    pub refuse_symlink: bool,
}

impl WriteOptions {
    /// A state file of fieldtrack's own, `mode` exactly, no symlink.
    pub const fn state(mode: u32) -> WriteOptions {
        WriteOptions {
            mode: Mode::Exactly(mode),
            refuse_symlink: true,
        }
    }
}

/// Replaces `path` with `bytes` atomically, keeping the mode and owner of the file it
/// replaces (0o644 for a new file) and creating the parent folder when missing.
///
/// A symlink at `path` is replaced by a regular file, not followed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(
        path,
        bytes,
        WriteOptions {
            mode: Mode::Keep { new: NEW_FILE_MODE },
            refuse_symlink: false,
        },
    )
}

/// Replaces `path` with `bytes` atomically, as `options` say, creating the parent folder
/// when missing.
pub fn write_atomic_with(path: &Path, bytes: &[u8], options: WriteOptions) -> io::Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir)?;

    // lstat: what is at the name itself, never what a link there points at.
    let existing = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_symlink() => {
            if options.refuse_symlink {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    Refused::Symlink {
                        target: fs::read_link(path).ok(),
                        what: "file",
                    },
                ));
            }
            None
        }
        Ok(meta) if !meta.is_file() => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                Refused::NotRegular {
                    kind: if meta.is_dir() {
                        "a folder"
                    } else {
                        "a special file"
                    },
                },
            ))
        }
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };

    // The name says what the temp file was for if a crash ever leaves one behind; dropping
    // `tmp` on an early return removes it.
    let prefix = match path.file_name() {
        Some(name) => format!(".{}.", name.to_string_lossy()),
        None => ".fieldtrack.".to_string(),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .make_in(dir, |name| {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(name)
        })?;
    tmp.write_all(bytes)?;
    let mode = match (options.mode, &existing) {
        (Mode::Exactly(mode), _) => mode,
        (Mode::Keep { .. }, Some(meta)) => meta.permissions().mode() & 0o7777,
        (Mode::Keep { new }, None) => new,
    };
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    if let (Mode::Keep { .. }, Some(meta)) = (options.mode, &existing) {
        // Only root may give a file away; anyone else keeps their own ownership.
        let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(meta.uid()), Some(meta.gid()));
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fsync_dir(dir)
}

/// Flushes a folder's entries (creations, renames, removals) to disk.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The folder holding `path`; `.` for a bare file name.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_support::{link_to_victim, mkfifo, VICTIM};

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        fs::write(&path, "old content that is longer than the new one").unwrap();

        write_atomic(&path, b"new").unwrap();

        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(entries(dir.path()), vec!["status.json"]);
    }

    #[test]
    fn keeps_permissions_of_the_replaced_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.toml");
        fs::write(&path, "image = \"a\"\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();

        write_atomic(&path, b"image = \"b\"\n").unwrap();

        assert_eq!(mode(&path), 0o640);
        assert_eq!(fs::read_to_string(&path).unwrap(), "image = \"b\"\n");
    }

    #[test]
    fn new_file_gets_0644_not_the_temp_file_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".deploy_history");

        write_atomic(&path, b"a4f91c2\n").unwrap();

        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn creates_missing_parent_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".fieldtrack/nested/status.json");

        write_atomic(&path, b"{}\n").unwrap();

        assert_eq!(fs::read(&path).unwrap(), b"{}\n");
        assert_eq!(
            entries(&dir.path().join(".fieldtrack/nested")),
            vec!["status.json"]
        );
    }

    #[test]
    fn failed_write_leaves_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // A folder in the way is refused.
        let path = dir.path().join("occupied");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), "x").unwrap();

        assert!(write_atomic(&path, b"new").is_err());

        assert_eq!(entries(dir.path()), vec!["occupied"]);
        assert_eq!(fs::read_to_string(path.join("inside")).unwrap(), "x");
    }

    #[test]
    fn fsync_dir_accepts_a_folder_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        fsync_dir(dir.path()).unwrap();
        assert!(fsync_dir(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_symlink_at_the_name_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.toml");
        let victim = dir.path().join("victim");
        link_to_victim(&path, &victim);
        fs::set_permissions(&victim, Permissions::from_mode(0o4755)).unwrap();

        write_atomic(&path, b"image = \"b\"\n").unwrap();

        assert_eq!(fs::read_to_string(&victim).unwrap(), VICTIM);
        assert!(!fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(fs::read(&path).unwrap(), b"image = \"b\"\n");
        // Not even the target's mode was taken over.
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn a_symlink_at_the_name_can_be_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let victim = dir.path().join("victim");
        link_to_victim(&path, &victim);

        let err = write_atomic_with(&path, b"{}", WriteOptions::state(0o640)).unwrap_err();

        assert!(err.to_string().contains("is a symlink to"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), VICTIM);
        assert!(fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(entries(dir.path()), vec!["status.json", "victim"]);
    }

    #[test]
    fn a_fifo_at_the_name_is_refused_without_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        mkfifo(&path);
        let err = write_atomic(&path, b"{}").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn exactly_sets_the_mode_whatever_the_old_file_had() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        fs::write(&path, "{}").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();

        write_atomic_with(&path, b"{}", WriteOptions::state(0o640)).unwrap();

        assert_eq!(mode(&path), 0o640);
    }

    #[test]
    fn keep_keeps_the_owner_of_the_replaced_file() {
        // The tests run as root (docs/testing.md), which may give a file away.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("desired.toml");
        fs::write(&path, "image = \"a\"\n").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();

        write_atomic(&path, b"image = \"b\"\n").unwrap();

        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
}
