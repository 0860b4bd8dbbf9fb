//! The `.deploy_history` file: the images that fully converged, newest first, which is what
//! `rollback` chooses from.
//!
//! The format is the seed's, byte for byte, because operators' scripts read it: one image a
//! line (the tag, or the full reference as the desired file gave it), at most `limit` lines,
//! nothing else, a newline after the last line. Each image appears once: recording one that is
//! already there moves it to the front, so the file always names up to `limit` distinct
//! versions to roll back to.
//!
//! It is read and replaced without following a symlink at its name (see [`super::file`]);
//! a new file is 0640, an existing one keeps its mode and owner.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use super::atomic::{write_atomic_with, Mode, WriteOptions};
use super::file::read_capped;

/// How the file is replaced: its mode and owner kept (operators' scripts read it), never
/// through a symlink.
const WRITE: WriteOptions = WriteOptions {
    mode: Mode::Keep { new: 0o640 },
    refuse_symlink: true,
};

/// A few lines of image names; anything near this is not a history file.
const READ_CAP: u64 = 1 << 20;

/// What can go wrong with the history file.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The history file exists but could not be read.
    #[error("failed to read history file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The new history could not be written; the old file is still in place.
    #[error("failed to write history file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The image is empty or contains whitespace, so it cannot be one line of the file.
    #[error("refusing to record {image:?} in history file {}: an entry must be one non-empty word", path.display())]
    InvalidImage { path: PathBuf, image: String },
}

/// The history, newest first. A missing file is an empty history; blank lines and whitespace
/// around entries are ignored so that a hand-edited file still works.
pub fn read(path: &Path) -> Result<Vec<String>, HistoryError> {
    let bytes = match read_capped(path, READ_CAP) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(Vec::new()),
        Err(source) => {
            return Err(HistoryError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let text = String::from_utf8(bytes).map_err(|e| HistoryError::Read {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect())
}

/// Records a converged image: moves it to the front, keeps at most `limit` entries and
/// replaces the file atomically. Returns the new history.
///
/// This is a read-modify-write; callers hold the reconcile lock so that no other process
/// records at the same time.
pub fn record(path: &Path, image: &str, limit: usize) -> Result<Vec<String>, HistoryError> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(HistoryError::InvalidImage {
            path: path.to_path_buf(),
            image: image.to_string(),
        });
    }
    let list = prepend_list(&read(path)?, image, limit);
    write_atomic_with(path, render(&list).as_bytes(), WRITE).map_err(|source| {
        HistoryError::Write {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(list)
}

/// The history after recording `image`: `image` first, then the earlier entries without it,
/// each entry at most once, at most `limit` entries in all.
pub fn prepend_list(list: &[String], image: &str, limit: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    std::iter::once(image)
        .chain(list.iter().map(String::as_str))
        .filter(|entry| seen.insert(*entry))
        .take(limit)
        .map(str::to_string)
        .collect()
}

/// The file content for `list`: one entry a line, a newline after the last one.
fn render(list: &[String]) -> String {
    list.iter().map(|entry| format!("{entry}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_support::{link_to_victim, mkfifo, within_5s, VICTIM};
    use std::fs;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prepend_to_empty_history() {
        assert_eq!(prepend_list(&[], "a4f91c2", 5), strings(&["a4f91c2"]));
    }

    #[test]
    fn prepend_new_image_goes_first() {
        let list = strings(&["b8c4d2e", "a4f91c2"]);
        assert_eq!(
            prepend_list(&list, "c5f7a1b", 5),
            strings(&["c5f7a1b", "b8c4d2e", "a4f91c2"])
        );
    }

    #[test]
    fn rollback_to_entry_two_moves_it_to_the_front() {
        // The contract's example.
        let list = strings(&["c5f7a1b", "b8c4d2e", "a4f91c2"]);
        assert_eq!(
            prepend_list(&list, "b8c4d2e", 5),
            strings(&["b8c4d2e", "c5f7a1b", "a4f91c2"])
        );
    }

    #[test]
    fn recording_the_last_entry_moves_it_to_the_front() {
        let list = strings(&["c5f7a1b", "b8c4d2e", "a4f91c2"]);
        assert_eq!(
            prepend_list(&list, "a4f91c2", 5),
            strings(&["a4f91c2", "c5f7a1b", "b8c4d2e"])
        );
    }

    #[test]
    fn recording_the_head_is_a_no_op() {
        let list = strings(&["c5f7a1b", "b8c4d2e", "a4f91c2"]);
        assert_eq!(prepend_list(&list, "c5f7a1b", 5), list);
    }

    #[test]
    fn six_distinct_records_with_limit_five_keep_the_newest_five() {
        let mut list = Vec::new();
        for image in ["v1", "v2", "v3", "v4", "v5", "v6"] {
            list = prepend_list(&list, image, 5);
        }
        assert_eq!(list, strings(&["v6", "v5", "v4", "v3", "v2"]));
    }

    #[test]
    fn moving_an_entry_at_the_limit_drops_nothing_else() {
        let list = strings(&["v5", "v4", "v3", "v2", "v1"]);
        assert_eq!(
            prepend_list(&list, "v1", 5),
            strings(&["v1", "v5", "v4", "v3", "v2"])
        );
    }

    #[test]
    fn a_longer_hand_edited_list_is_cut_to_the_limit() {
        let list = strings(&["v7", "v6", "v5", "v4", "v3", "v2", "v1"]);
        assert_eq!(prepend_list(&list, "v8", 3), strings(&["v8", "v7", "v6"]));
    }

    #[test]
    fn limit_one_keeps_only_the_new_image() {
        let list = strings(&["b8c4d2e", "a4f91c2"]);
        assert_eq!(prepend_list(&list, "c5f7a1b", 1), strings(&["c5f7a1b"]));
        assert_eq!(prepend_list(&list, "a4f91c2", 1), strings(&["a4f91c2"]));
        assert_eq!(prepend_list(&list, "b8c4d2e", 1), strings(&["b8c4d2e"]));
    }

    #[test]
    fn limit_zero_keeps_nothing() {
        assert!(prepend_list(&strings(&["a"]), "b", 0).is_empty());
    }

    #[test]
    fn duplicates_from_a_hand_edited_file_collapse() {
        let list = strings(&["b", "a", "b", "c", "a"]);
        assert_eq!(prepend_list(&list, "d", 5), strings(&["d", "b", "a", "c"]));
        assert_eq!(prepend_list(&list, "a", 5), strings(&["a", "b", "c"]));
    }

    #[test]
    fn tag_and_full_reference_are_distinct_entries() {
        let list = strings(&["a4f91c2"]);
        assert_eq!(
            prepend_list(&list, "ghcr.io/fieldtrack-tech/api:a4f91c2", 5),
            strings(&["ghcr.io/fieldtrack-tech/api:a4f91c2", "a4f91c2"])
        );
    }

    #[test]
    fn read_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join(".deploy_history"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn read_ignores_blank_lines_and_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".deploy_history");
        fs::write(&path, "\n  c5f7a1b  \r\n\n\tb8c4d2e\na4f91c2").unwrap();
        assert_eq!(
            read(&path).unwrap(),
            strings(&["c5f7a1b", "b8c4d2e", "a4f91c2"])
        );
    }

    #[test]
    fn read_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        // A folder where the file should be cannot be read as text.
        let path = dir.path().join(".deploy_history");
        fs::create_dir(&path).unwrap();
        let err = read(&path).unwrap_err();
        assert!(matches!(err, HistoryError::Read { .. }));
        assert!(err.to_string().contains(".deploy_history"), "{err}");
    }

    #[test]
    fn record_writes_the_seed_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".deploy_history");
        fs::write(&path, "c5f7a1b\nb8c4d2e\na4f91c2\n").unwrap();

        let list = record(&path, "b8c4d2e", 5).unwrap();

        assert_eq!(list, strings(&["b8c4d2e", "c5f7a1b", "a4f91c2"]));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "b8c4d2e\nc5f7a1b\na4f91c2\n"
        );
    }

    #[test]
    fn record_creates_the_file_and_truncates_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".deploy_history");
        for image in ["v1", "v2", "v3", "v4", "v5", "v6"] {
            record(&path, image, 5).unwrap();
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "v6\nv5\nv4\nv3\nv2\n");
        assert_eq!(
            read(&path).unwrap(),
            strings(&["v6", "v5", "v4", "v3", "v2"])
        );
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp files left behind: {names:?}");
    }

    #[test]
    fn record_normalises_a_hand_edited_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".deploy_history");
        fs::write(&path, "  b8c4d2e\n\n a4f91c2 ").unwrap();

        record(&path, "c5f7a1b", 5).unwrap();

        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "c5f7a1b\nb8c4d2e\na4f91c2\n"
        );
    }

    #[test]
    fn record_refuses_an_image_that_would_break_the_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".deploy_history");
        fs::write(&path, "a4f91c2\n").unwrap();
        for bad in ["", "two words", "line\nbreak", " padded"] {
            let err = record(&path, bad, 5).unwrap_err();
            assert!(matches!(err, HistoryError::InvalidImage { .. }), "{bad:?}");
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), "a4f91c2\n");
    }

    #[test]
    fn record_through_a_symlink_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".deploy_history");
        let victim = dir.path().join("victim");
        link_to_victim(&path, &victim);

        let err = record(&path, "a4f91c2", 5).unwrap_err();

        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), VICTIM);
        assert!(fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    #[test]
    fn read_of_a_fifo_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".deploy_history");
        mkfifo(&path);

        let result = within_5s("reading a history file that is a FIFO", move || {
            read(&path).map_err(|e| e.to_string())
        });

        assert!(result.unwrap_err().contains("not a regular file"));
    }
}
