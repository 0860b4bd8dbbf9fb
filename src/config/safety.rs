//! The file-safety rules: which files fieldtrack believes.
//!
//! Whoever can write the desired file chooses what runs in production, and whoever can write
//! the config chooses which commands fieldtrack runs (as root, next to the Docker socket). Two
//! rules follow:
//!
//! - [`check_file_safety`], for the config and the desired file: refused when anyone on the
//!   machine could have written it (world-writable), or when it is a symlink that leads out
//!   of its own folder (to somewhere its owner may not control, such as `/tmp`).
//! - [`check_trusted`], for the config and the env file, like sshd's `StrictModes`: the file
//!   and every folder above it must be owned by root or by the user running fieldtrack, and
//!   writable by no one else. The desired file is exempt: CI writes it, through a group.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt};
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
    /// The file, or a folder above it, belongs to a user other than root and the user
    /// running fieldtrack: that user could change what fieldtrack trusts.
    #[error(
        "refusing {file}: {what} is owned by {owner} (mode {mode:04o}), not by root or the \
         user running fieldtrack; run `chown root {path}`"
    )]
    ForeignOwner {
        /// The file that was to be read.
        file: PathBuf,
        /// "it", or "its folder /x" / "the folder /x above it".
        what: String,
        /// The file or folder at fault.
        path: PathBuf,
        /// User name, or `uid N` when it has none.
        owner: String,
        mode: u32,
    },
    /// The file, or a folder above it, is writable by its group or by everyone.
    #[error(
        "refusing {file}: {what} is writable by others than its owner (owner {owner}, mode \
         {mode:04o}); run `chmod go-w {path}`"
    )]
    OthersMayWrite {
        /// The file that was to be read.
        file: PathBuf,
        /// "it", or "its folder /x" / "the folder /x above it".
        what: String,
        /// The file or folder at fault.
        path: PathBuf,
        /// User name, or `uid N` when it has none.
        owner: String,
        mode: u32,
    },
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

/// Reads the config or desired file at `path` under [`check_file_safety`]'s rules, opening it
/// once and judging what was opened, so that nothing renamed over the path between a check
/// and the read can slip through or block: the name is opened without following a symlink
/// and without blocking (a FIFO renamed there opens at once and is refused as not a regular
/// file; a socket fails to open), and the mode, the kind and the size come from the open
/// descriptor, so a 1 GiB file is refused before a byte of it is read.
///
/// A symlink is followed only when it leads into its own folder: then its resolved target is
/// opened the same way (a target swapped for another link meanwhile fails to open).
pub fn read_safe_file(path: &Path) -> Result<String, SafetyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let inspect = |source| SafetyError::Inspect {
        path: path.to_path_buf(),
        source,
    };
    let link = fs::symlink_metadata(path).map_err(inspect)?;
    let name = if link.file_type().is_symlink() {
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
        target
    } else {
        path.to_path_buf()
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&name)
        .map_err(|e| match e.raw_os_error() {
            // ENXIO: a unix socket; ELOOP: a symlink renamed there since the look above.
            Some(libc::ENXIO) | Some(libc::ELOOP) => SafetyError::NotAFile {
                path: path.to_path_buf(),
            },
            _ => inspect(e),
        })?;
    let meta = file.metadata().map_err(inspect)?;
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
    let too_large = || {
        inspect(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is larger than {MAX_FILE_BYTES} bytes"),
        ))
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // One byte more than allowed tells a file that grew while it was read.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(inspect)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| {
        inspect(io::Error::new(
            io::ErrorKind::InvalidData,
            "file is not valid UTF-8",
        ))
    })
}

/// Refuses `path` unless it is a regular file that only root or the user running fieldtrack
/// can change: the file and every folder above it, up to `/`, owned by one of them and
/// without group or world write bits. A folder above the file's own folder may be sticky
/// and world-writable (`/tmp`, `/var/tmp`): there, only an entry's owner may rename or
/// remove it, and the entry below is itself checked to be root's or ours.
///
/// Both the path as written and the path with every symlink resolved are checked: a link
/// in a folder someone else controls could be swapped, and a link's target must be as safe
/// as the file it stands for. Does not open the file, so a FIFO cannot block the caller.
pub fn check_trusted(path: &Path) -> Result<(), SafetyError> {
    let inspect = |source| SafetyError::Inspect {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(inspect)?;
    if !meta.is_file() {
        return Err(SafetyError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let written = std::path::absolute(path).map_err(inspect)?;
    check_chain(path, &written)?;
    let real = fs::canonicalize(path).map_err(inspect)?;
    if real != written {
        check_chain(path, &real)?;
    }
    Ok(())
}

/// Checks `chain` (absolute: `file` as written, or its resolved form) and every folder
/// above it. `..` components are simply followed, as the kernel does.
fn check_chain(file: &Path, chain: &Path) -> Result<(), SafetyError> {
    let euid = rustix::process::geteuid().as_raw();
    for (depth, entry) in chain.ancestors().enumerate() {
        let meta = fs::metadata(entry).map_err(|source| SafetyError::Inspect {
            path: entry.to_path_buf(),
            source,
        })?;
        let what = || match depth {
            0 => "it".to_owned(),
            1 => format!("its folder {}", entry.display()),
            _ => format!("the folder {} above it", entry.display()),
        };
        let mode = meta.mode() & 0o7777;
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(SafetyError::ForeignOwner {
                file: file.to_path_buf(),
                what: what(),
                path: entry.to_path_buf(),
                owner: user_name(meta.uid()),
                mode,
            });
        }
        // Sticky: others may add entries but not rename or remove ours. Fine above the
        // file's own folder, never as it (anyone could plant a file beside ours there).
        let sticky_above = depth >= 2 && mode & 0o1000 != 0;
        if mode & 0o022 != 0 && !sticky_above {
            return Err(SafetyError::OthersMayWrite {
                file: file.to_path_buf(),
                what: what(),
                path: entry.to_path_buf(),
                owner: user_name(meta.uid()),
                mode,
            });
        }
    }
    Ok(())
}

/// The login name of `uid`, else `uid N`.
fn user_name(uid: u32) -> String {
    // nix reads the name lossily: one that is not UTF-8 comes back with U+FFFD in it, and
    // is shown as its uid, like a user that has no name.
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user))
            if !user.name.is_empty() && !user.name.contains(char::REPLACEMENT_CHARACTER) =>
        {
            user.name
        }
        _ => format!("uid {uid}"),
    }
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

    /// `root/app/fieldtrack.toml` below a private tempdir (0700 in sticky /tmp), every
    /// entry root's: 0755 folder, 0644 file.
    fn trusted_layout() -> (tempfile::TempDir, PathBuf) {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let folder = root.path().join("app");
        fs::create_dir(&folder).unwrap();
        fs::set_permissions(&folder, fs::Permissions::from_mode(0o755)).unwrap();
        let file = folder.join("fieldtrack.toml");
        write(&file, 0o644);
        (root, file)
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn root_owned_file_and_folders_below_sticky_tmp_are_trusted() {
        let (_root, file) = trusted_layout();
        check_trusted(&file).unwrap();
        chmod(&file, 0o600);
        check_trusted(&file).unwrap();
    }

    #[test]
    fn a_file_owned_by_another_user_is_refused_naming_owner_mode_and_fix() {
        let (_root, file) = trusted_layout();
        std::os::unix::fs::chown(&file, Some(1000), None).unwrap();
        let err = check_trusted(&file).unwrap_err();
        assert!(
            matches!(&err, SafetyError::ForeignOwner { path, .. } if *path == file),
            "{err:?}"
        );
        let msg = err.to_string();
        let shown = file.display().to_string();
        assert!(
            msg.starts_with(&format!("refusing {shown}: it is owned by ")),
            "{msg}"
        );
        assert!(msg.contains("(mode 0644)"), "{msg}");
        assert!(msg.contains(&format!("run `chown root {shown}`")), "{msg}");
    }

    #[test]
    fn a_folder_owned_by_another_user_is_refused_by_name() {
        let (root, file) = trusted_layout();
        let folder = file.parent().unwrap();
        std::os::unix::fs::chown(folder, Some(65534), None).unwrap();
        let msg = check_trusted(&file).unwrap_err().to_string();
        assert!(
            msg.contains(&format!(
                "its folder {} is owned by nobody",
                folder.display()
            )),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("`chown root {}`", folder.display())),
            "{msg}"
        );
        // Higher up too, and an owner without a name is shown by uid.
        std::os::unix::fs::chown(folder, Some(0), None).unwrap();
        std::os::unix::fs::chown(root.path(), Some(54321), None).unwrap();
        let msg = check_trusted(&file).unwrap_err().to_string();
        assert!(
            msg.contains(&format!(
                "the folder {} above it is owned by uid 54321",
                root.path().display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn group_or_world_write_anywhere_on_the_way_is_refused() {
        let (root, file) = trusted_layout();
        let folder = file.parent().unwrap().to_path_buf();
        for (path, mode) in [
            (&file, 0o664),
            (&file, 0o646),
            (&folder, 0o775),
            (&folder, 0o757),
            (&root.path().to_path_buf(), 0o770),
            (&root.path().to_path_buf(), 0o777),
        ] {
            let before = fs::metadata(path).unwrap().permissions().mode() & 0o7777;
            chmod(path, mode);
            let err = check_trusted(&file).unwrap_err();
            assert!(
                matches!(&err, SafetyError::OthersMayWrite { path: p, .. } if p == path),
                "{mode:o}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&format!("mode {mode:04o}")), "{msg}");
            assert!(msg.contains("owner root"), "{msg}");
            assert!(
                msg.contains(&format!("`chmod go-w {}`", path.display())),
                "{msg}"
            );
            chmod(path, before);
        }
        check_trusted(&file).unwrap();
    }

    #[test]
    fn a_sticky_folder_is_fine_above_a_safe_folder_but_not_as_the_files_own() {
        let (root, file) = trusted_layout();
        // Like /tmp: root's, 1777, above the 0755 folder of the file.
        chmod(root.path(), 0o1777);
        check_trusted(&file).unwrap();
        // A sticky folder of another user's: that user may rename anything in it.
        std::os::unix::fs::chown(root.path(), Some(1000), None).unwrap();
        assert!(matches!(
            check_trusted(&file).unwrap_err(),
            SafetyError::ForeignOwner { .. }
        ));
        std::os::unix::fs::chown(root.path(), Some(0), None).unwrap();
        // As the file's own folder: anyone could plant files beside it.
        chmod(root.path(), 0o700);
        let folder = file.parent().unwrap();
        chmod(folder, 0o1777);
        let err = check_trusted(&file).unwrap_err();
        assert!(
            matches!(&err, SafetyError::OthersMayWrite { path, mode: 0o1777, .. } if path == folder),
            "{err:?}"
        );
    }

    #[test]
    fn symlinks_are_checked_as_written_and_as_resolved() {
        let (root, file) = trusted_layout();
        let folder = file.parent().unwrap();
        // A link to a file in a folder of another user's.
        let foreign = root.path().join("foreign");
        fs::create_dir(&foreign).unwrap();
        write(&foreign.join("real.toml"), 0o644);
        std::os::unix::fs::chown(&foreign, Some(1000), None).unwrap();
        let link = folder.join("linked.toml");
        symlink(foreign.join("real.toml"), &link).unwrap();
        let err = check_trusted(&link).unwrap_err();
        assert!(
            matches!(&err, SafetyError::ForeignOwner { path, .. } if *path == foreign),
            "{err:?}"
        );
        // A safe file reached through a link that sits in a folder of another user's: the
        // link could be swapped.
        let through = foreign.join("app");
        symlink(folder, &through).unwrap();
        let err = check_trusted(&through.join("fieldtrack.toml")).unwrap_err();
        assert!(
            matches!(&err, SafetyError::ForeignOwner { path, .. } if *path == foreign),
            "{err:?}"
        );
        // A link inside a safe folder to a safe file is fine.
        let near = folder.join("near.toml");
        symlink("fieldtrack.toml", &near).unwrap();
        check_trusted(&near).unwrap();
    }

    #[test]
    fn trusted_means_a_regular_file_that_exists() {
        let (_root, file) = trusted_layout();
        let folder = file.parent().unwrap();
        assert!(matches!(
            check_trusted(folder).unwrap_err(),
            SafetyError::NotAFile { .. }
        ));
        assert!(matches!(
            check_trusted(&folder.join("missing.env")).unwrap_err(),
            SafetyError::Inspect { .. }
        ));
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
