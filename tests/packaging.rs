//! The files shipped beside the binary: the systemd unit and the example configs.

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `systemd-analyze verify` accepts the unit without a single warning (it only warns about
/// unknown keys, so any output is a failure here).
#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze is missing: the test bed installs Debian's systemd package (testbed up)"
    );
    let unit = std::fs::read_to_string(repo("systemd/fieldtrack.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = unit.replace("/usr/bin/fieldtrack", env!("CARGO_BIN_EXE_fieldtrack"));
    let path = dir.path().join("fieldtrack.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("fieldtrack.service"))
        .collect();
    assert!(ours.is_empty(), "verify warned: {ours:?}");
}
