//! The files fieldtrack owns: history, status, audit log, the reconcile lock, the daemon's
//! answers to `fieldtrack reconcile`, and the atomic write they share.
//!
//! Everything a restarted daemon needs to know lives in these files or in the real world,
//! never only in memory, so each module here is careful about what a crash at any instant
//! leaves behind.

pub mod atomic;
pub mod audit;
pub mod by_hand;
pub mod history;
pub mod lock;
pub mod status;

use std::time::SystemTime;

/// Name of the status file inside `state_dir`.
pub const STATUS_FILE: &str = "status.json";

/// Name of the audit log inside `state_dir`.
pub const AUDIT_FILE: &str = "audit.jsonl";

pub use lock::LOCK_FILE;

/// The current time as RFC 3339 UTC with whole seconds, e.g. `2026-11-26T12:00:00Z`: the one
/// timestamp format of every state file.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
