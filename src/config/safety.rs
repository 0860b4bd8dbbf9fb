//! The file-safety rule shared by the config and the desired-state file.
//!
//! Whoever can write the desired file chooses what runs in production, and whoever can write
//! the config chooses which commands fieldtrack runs. So both are refused when anyone on the
//! machine could have written them: a world-writable file, or a symlink that leads out of
//! the file's own folder (to somewhere its owner may not control, such as `/tmp`).

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Largest config or desired file fieldtrack reads. Both are a few hundred bytes; the cap
/// only keeps a runaway writer from making the daemon allocate without bound.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SafetyError {
    /// The file (or what its symlink points at) could not be inspected, e.g. it is missing.
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Anyone on the machine may write the file.
    #[error(
        "refusing {path}: it is world-writable (mode {mode:04o}), so anyone on this machine \
         could change it; run `chmod o-w` on it"
    )]
    WorldWritable { path: PathBuf, mode: u32 },
    /// The file is a symlink whose target lies outside the symlink's folder.
    #[error("refusing {path}: it is a symlink to {target}, which is outside its folder {folder}")]
    SymlinkOutsideFolder {
        path: PathBuf,
        target: PathBuf,
        folder: PathBuf,
    },
    /// The path names a directory, device, FIFO or socket rather than a regular file.
    #[error("refusing {path}: it is not a regular file")]
    NotAFile { path: PathBuf },
}

/// Refuses a world-writable file, a symlink leading outside its own folder, and anything
/// that is not a regular file. Does not open the file, so a FIFO cannot block the caller.
///
/// A symlink to a file in the same folder, or in a folder below it, is fine; the mode that
/// counts is that of the file finally pointed at (a symlink's own mode is always 0777).
pub fn check_file_safety(path: &Path) -> Result<(), SafetyError> {
    let inspect = |source| SafetyError::Inspect {
        path: path.to_path_buf(),
        source,
    };
    let link = fs::symlink_metadata(path).map_err(inspect)?;
    if link.file_type().is_symlink() {
        let target = fs::canonicalize(path).map_err(inspect)?;
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let folder = fs::canonicalize(folder).map_err(inspect)?;
        if !target.starts_with(&folder) {
            return Err(SafetyError::SymlinkOutsideFolder {
                path: path.to_path_buf(),
                target,
                folder,
            });
        }
    }
    let meta = fs::metadata(path).map_err(inspect)?;
    if !meta.is_file() {
        return Err(SafetyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o002 != 0 {
        return Err(SafetyError::WorldWritable {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads a whole UTF-8 file of at most [`MAX_FILE_BYTES`].
pub fn read_small_file(path: &Path) -> io::Result<String> {
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, mode: u32) {
        fs::write(path, "image = \"v1\"\n").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn plain_private_file_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("desired.toml");
        write(&file, 0o644);
        check_file_safety(&file).unwrap();
        write(&file, 0o664);
        check_file_safety(&file).unwrap();
        write(&file, 0o600);
        check_file_safety(&file).unwrap();
    }

    #[test]
    fn world_writable_file_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("desired.toml");
        write(&file, 0o666);
        let err = check_file_safety(&file).unwrap_err();
        assert!(matches!(
            err,
            SafetyError::WorldWritable { mode: 0o666, .. }
        ));
        let msg = err.to_string();
        assert!(msg.contains("world-writable"), "{msg}");
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(msg.contains("0666"), "{msg}");
    }

    #[test]
    fn symlink_in_the_same_folder_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("desired.real.toml");
        write(&real, 0o644);
        let link = dir.path().join("desired.toml");
        symlink("desired.real.toml", &link).unwrap();
        check_file_safety(&link).unwrap();
    }

    #[test]
    fn symlink_into_a_subfolder_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("releases")).unwrap();
        let real = dir.path().join("releases/desired.toml");
        write(&real, 0o644);
        let link = dir.path().join("desired.toml");
        symlink(&real, &link).unwrap();
        check_file_safety(&link).unwrap();
    }

    #[test]
    fn symlink_outside_its_folder_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let real = outside.path().join("evil.toml");
        write(&real, 0o644);
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("desired.toml");
        symlink(&real, &link).unwrap();
        let err = check_file_safety(&link).unwrap_err();
        assert!(
            matches!(err, SafetyError::SymlinkOutsideFolder { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("symlink"), "{msg}");
        assert!(msg.contains("outside its folder"), "{msg}");
        assert!(msg.contains(&link.display().to_string()), "{msg}");
    }

    #[test]
    fn symlink_up_and_back_out_of_the_folder_is_refused() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("app")).unwrap();
        write(&root.path().join("other.toml"), 0o644);
        let link = root.path().join("app/desired.toml");
        symlink("../other.toml", &link).unwrap();
        let err = check_file_safety(&link).unwrap_err();
        assert!(
            matches!(err, SafetyError::SymlinkOutsideFolder { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn symlink_to_a_world_writable_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.toml");
        write(&real, 0o666);
        let link = dir.path().join("desired.toml");
        symlink("real.toml", &link).unwrap();
        let err = check_file_safety(&link).unwrap_err();
        assert!(matches!(err, SafetyError::WorldWritable { .. }), "{err:?}");
    }

    #[test]
    fn dangling_symlink_and_missing_file_cannot_be_inspected() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = check_file_safety(&missing).unwrap_err();
        match err {
            SafetyError::Inspect { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("unexpected {other:?}"),
        }
        let link = dir.path().join("desired.toml");
        symlink("nowhere.toml", &link).unwrap();
        assert!(matches!(
            check_file_safety(&link).unwrap_err(),
            SafetyError::Inspect { .. }
        ));
    }

    #[test]
    fn directory_is_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_file_safety(dir.path()).unwrap_err();
        assert!(matches!(err, SafetyError::NotAFile { .. }), "{err:?}");
    }

    #[test]
    fn relative_path_without_folder_uses_the_current_folder() {
        // Only checks that a bare file name does not trip over an empty parent; the file
        // does not exist, so the answer is "cannot inspect", not a panic.
        let err = check_file_safety(Path::new("surely-not-here-fieldtrack.toml")).unwrap_err();
        assert!(matches!(err, SafetyError::Inspect { .. }));
    }

    #[test]
    fn read_small_file_rejects_huge_and_non_utf8_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.toml");
        fs::write(&file, vec![b'#'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert_eq!(
            read_small_file(&file).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        fs::write(&file, vec![b'#'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(
            read_small_file(&file).unwrap().len(),
            MAX_FILE_BYTES as usize
        );
        fs::write(&file, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_small_file(&file).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
