//! The app's secrets: the env file read at deploy time, and the redactor that keeps its
//! values out of every message.

pub mod env_file;
pub mod redact;
