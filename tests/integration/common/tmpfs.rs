//! A small file system of a test's own, to fill up: what fieldtrack does when a disk is full
//! is observed on a tmpfs mounted for the test, never on the machine's disks.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a folder, unmounted when dropped (drop it before the site it is in).
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` on `dir`. When mounting is not permitted the test is skipped
    /// (None, with the reason on stderr), except under `CI=true`, where it fails.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(dir)
            .output();
        let why = match out {
            Ok(out) if out.status.success() => {
                return Some(Tmpfs {
                    dir: dir.to_path_buf(),
                })
            }
            Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => format!("cannot run mount: {e}"),
        };
        let message = format!(
            "cannot mount a tmpfs on {} (needs root or CAP_SYS_ADMIN): {why}",
            dir.display()
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{message}; CI=true, so this is a failure, not a skip");
        }
        eprintln!("SKIPPED: {message}");
        None
    }

    /// A path inside the mounted folder.
    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Fills the file system up with a file named `filler`, returns its path.
    pub fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut file = File::create(&path).expect("the filler is created");
        let chunk = [0u8; 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.dir.display()),
            }
        }
        let _ = file.sync_all();
        // Nothing more fits, not even a byte.
        let probe = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(self.dir.join("probe"))
            .and_then(|mut f| f.write_all(&[0u8; 64]).and_then(|()| f.sync_all()));
        let _ = fs::remove_file(self.dir.join("probe"));
        assert!(probe.is_err(), "{} is not full", self.dir.display());
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
