//! How fieldtrack opens the files it keeps (status, audit log, lock, history, the nginx
//! upstream file) and checks the state folder that holds most of them.
//!
//! fieldtrack runs as root. A symlink planted where one of its files belongs would make root
//! truncate, append to or replace whatever the link points at; a link to /dev/zero would fill
//! memory on the next read, and a FIFO would block the daemon forever on open. So every open
//! here uses `O_NOFOLLOW` (a symlink at the name fails instead of being followed) and
//! `O_NONBLOCK` (opening a FIFO returns at once), and the opened descriptor must then be a
//! regular file before a byte is read or written; reads stop at a size cap.
//!
//! Refusals travel as `io::Error`s wrapping a [`Refused`], so that the callers' own error
//! types, which already carry the path and what was being done, keep their shape.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a file or folder was refused. Wrapped in an `io::Error`; the message follows the
/// caller's "failed to read {path}: ".
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A symlink where fieldtrack's own file or folder belongs.
    #[error("it is a symlink{}, and fieldtrack follows no symlink here: replace it with a regular {what}, or point the config at the real one", target_text(.target))]
    Symlink {
        target: Option<PathBuf>,
        what: &'static str,
    },
    /// Not a regular file: a FIFO, a device, a socket or a folder.
    #[error("it is not a regular file but {kind}")]
    NotRegular { kind: &'static str },
    /// Larger than fieldtrack ever makes it.
    #[error("it is larger than {cap} bytes, far more than fieldtrack ever writes there")]
    TooLarge { cap: u64 },
    /// Something is wrong with the state folder; says which folder.
    #[error("state folder {}: {source}", dir.display())]
    StateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The state folder exists but is not a folder.
    #[error("it is not a folder")]
    NotADir,
    /// The state folder belongs to another user than root or the one running fieldtrack.
    #[error("it is owned by uid {owner}, neither root nor this user (uid {user}): chown it to uid {user}, or point state_dir elsewhere")]
    ForeignOwner { owner: u32, user: u32 },
    /// The state folder is root's and others may write into it; not ours to tighten.
    #[error("others may write into it (mode {mode:o}): chmod it to 700")]
    OpenToOthers { mode: u32 },
}

fn target_text(target: &Option<PathBuf>) -> String {
    match target {
        Some(target) => format!(" to {}", target.display()),
        None => String::new(),
    }
}

/// Mode of the state folder: only its owner goes in.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Opens `path` with `options` without following a symlink at its name and without
/// blocking on a FIFO, and returns it only when it is a regular file.
pub fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| explain_open_error(path, e, "file"))?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(refused(Refused::NotRegular {
            kind: describe(&kind),
        }));
    }
    Ok(file)
}

/// The whole file, or `None` when it does not exist; refused when it is a symlink, not a
/// regular file, or larger than `cap` bytes.
pub fn read_capped(path: &Path, cap: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match open_regular(path, OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    // One byte more than allowed tells "exactly cap" from "more than cap", also for a file
    // that grows while it is read.
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(refused(Refused::TooLarge { cap }));
    }
    Ok(Some(bytes))
}

/// The last `cap` bytes of the file (all of it when smaller) and whether its beginning was
/// cut off, or `None` when it does not exist. For a file that only grows (the audit log).
pub fn read_tail(path: &Path, cap: u64) -> io::Result<Option<(Vec<u8>, bool)>> {
    let mut file = match open_regular(path, OpenOptions::new().read(true)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let cut = len > cap;
    if cut {
        file.seek(SeekFrom::Start(len - cap))?;
    }
    let mut bytes = Vec::new();
    file.take(cap).read_to_end(&mut bytes)?;
    Ok(Some((bytes, cut)))
}

/// Removes the permission bits of an open file that `mode` does not grant (a file from an
/// older fieldtrack, or loosened by hand), when this user owns it; never adds any.
pub fn tighten(file: &File, mode: u32) -> io::Result<()> {
    let meta = file.metadata()?;
    let current = meta.permissions().mode() & 0o7777;
    if current & !mode != 0 && meta.uid() == effective_uid() {
        file.set_permissions(fs::Permissions::from_mode(current & mode))?;
    }
    Ok(())
}

/// Makes sure `dir` is a state folder fieldtrack may use: creates it (0700) when missing;
/// refuses a symlink, something that is not a folder, or a folder of another user than root
/// or this one; tightens one of this user's to 0700.
pub fn prepare_state_dir(dir: &Path) -> io::Result<()> {
    check_state_dir(dir).map_err(|source| {
        io::Error::new(
            source.kind(),
            Refused::StateDir {
                dir: dir.to_path_buf(),
                source,
            },
        )
    })
}

fn check_state_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(STATE_DIR_MODE)
        .create(dir)
        .map_err(|e| match fs::symlink_metadata(dir) {
            Ok(meta) if !meta.is_dir() && !meta.is_symlink() => refused(Refused::NotADir),
            _ => e,
        })?;
    // The checks and the chmod go through one descriptor opened without following a
    // symlink, so the folder cannot be swapped for a link in between.
    let folder = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| explain_open_error(dir, e, "folder"))?;
    let meta = folder.metadata()?;
    let user = effective_uid();
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() == user {
        if mode != STATE_DIR_MODE {
            folder.set_permissions(fs::Permissions::from_mode(STATE_DIR_MODE))?;
        }
    } else if meta.uid() != 0 {
        return Err(refused(Refused::ForeignOwner {
            owner: meta.uid(),
            user,
        }));
    } else if mode & 0o022 != 0 {
        return Err(refused(Refused::OpenToOthers { mode }));
    }
    Ok(())
}

/// The user fieldtrack runs as, which owns what it creates.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// An `io::Error` that carries why the file was refused.
fn refused(why: Refused) -> io::Error {
    let kind = match why {
        Refused::TooLarge { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::PermissionDenied,
    };
    io::Error::new(kind, why)
}

/// `O_NOFOLLOW` reports a symlink as ELOOP ("too many levels of symbolic links"), or as
/// ENOTDIR with `O_DIRECTORY`, and `O_DIRECTORY` a file as ENOTDIR: say what was found.
fn explain_open_error(path: &Path, e: io::Error, what: &'static str) -> io::Error {
    if !matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) {
        return e;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_symlink() => refused(Refused::Symlink {
            target: fs::read_link(path).ok(),
            what,
        }),
        Ok(meta) if what == "folder" && !meta.is_dir() => refused(Refused::NotADir),
        _ => e,
    }
}

/// What a file that is not regular is, in words.
fn describe(kind: &fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a folder"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "something else"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_support::{mkfifo, within_5s};

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn read_capped_reads_up_to_the_cap_and_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert_eq!(read_capped(&path, 4).unwrap(), None);
        fs::write(&path, "1234").unwrap();
        assert_eq!(read_capped(&path, 4).unwrap().unwrap(), b"1234");
        fs::write(&path, "12345").unwrap();
        let err = read_capped(&path, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("larger than 4 bytes"), "{err}");
    }

    #[test]
    fn read_capped_refuses_a_symlink_naming_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        let err = read_capped(&path, 1 << 20).unwrap_err();
        assert!(
            err.to_string().contains("is a symlink to /etc/passwd"),
            "{err}"
        );
    }

    #[test]
    fn read_capped_of_a_fifo_or_a_device_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        mkfifo(&fifo);
        let err = within_5s("reading a FIFO", move || {
            read_capped(&fifo, 10).unwrap_err().to_string()
        });
        assert!(err.contains("not a regular file but a FIFO"), "{err}");
        let err = read_capped(Path::new("/dev/zero"), 10).unwrap_err();
        assert!(err.to_string().contains("a device"), "{err}");
    }

    #[test]
    fn read_tail_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "0123456789").unwrap();
        assert_eq!(read_tail(&path, 4).unwrap(), Some((b"6789".to_vec(), true)));
        assert_eq!(
            read_tail(&path, 10).unwrap(),
            Some((b"0123456789".to_vec(), false))
        );
        assert_eq!(read_tail(&dir.path().join("none"), 4).unwrap(), None);
    }

    #[test]
    fn tighten_only_removes_bits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "").unwrap();
        for (before, after) in [(0o666, 0o640), (0o600, 0o600), (0o400, 0o400)] {
            fs::set_permissions(&path, fs::Permissions::from_mode(before)).unwrap();
            tighten(&File::open(&path).unwrap(), 0o640).unwrap();
            assert_eq!(mode(&path), after, "from {before:o}");
        }
    }

    #[test]
    fn prepare_state_dir_creates_and_tightens_to_0700() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("a/state");
        prepare_state_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
        fs::set_permissions(&state, fs::Permissions::from_mode(0o777)).unwrap();
        prepare_state_dir(&state).unwrap();
        assert_eq!(mode(&state), 0o700);
    }

    #[test]
    fn prepare_state_dir_refuses_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::write(&state, "").unwrap();
        let err = prepare_state_dir(&state).unwrap_err();
        assert!(err.to_string().contains("not a folder"), "{err}");
    }
}
