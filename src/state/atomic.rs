//! Atomic file replacement, shared by every file write that matters (history, status, the
//! desired file when the CLI rewrites it).
//!
//! The new content goes to a temp file in the same folder (a rename is only atomic within one
//! file system), is fsynced, then renamed over the target, and the folder is fsynced so the
//! rename itself survives a power cut. A crash at any instant leaves the old file or the new
//! one, never a mix, and at worst a stray temp file that nothing reads.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Mode of a file that did not exist before.
const NEW_FILE_MODE: u32 = 0o644;

/// Replaces `path` with `bytes` atomically, keeping the permissions of the file it replaces
/// (0o644 for a new file) and creating the parent folder when missing.
///
/// A symlink at `path` is replaced by a regular file, not followed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir)?;

    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) if e.kind() == io::ErrorKind::NotFound => NEW_FILE_MODE,
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
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    fsync_dir(dir)
}

/// Flushes a folder's entries (creations, renames, removals) to disk.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The folder holding `path`; `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A folder in the way makes the rename fail after the temp file was written.
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
}
