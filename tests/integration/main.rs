//! Every integration test of fieldtrack in one binary, one module per behaviour, as ripgrep
//! does: cargo links one executable instead of one per file, and the harness in [`common`]
//! is compiled once. `cargo test --test integration daemon::` runs one module,
//! `cargo test --test integration NAME` one test by (part of) its name.
//!
//! The tests of all modules share libtest's threads (as many as cores, as each file's binary
//! had before), so tests of different modules now run side by side. What they share is
//! guarded where they share it: the swarm by its `flock`s (`Swarm::steady`, `Swarm::faults`),
//! the production machine by its own mutex, ports and site names by counters and locks in
//! the testbed crate, images by repositories of a test's own.

mod common;

mod auto_rollback;
mod canary;
mod canary_resume;
mod canary_setup;
mod daemon;
mod deploy_group;
mod digests;
mod email;
mod faults;
mod health_host;
mod hooks;
mod image_retention;
mod metrics;
mod onboarding;
mod packaging;
mod preview;
mod production;
mod progress;
mod pure_switch;
mod reconcile;
mod registry_auth;
mod rollback;
mod secrets;
mod serving;
mod settings;
mod state_files;
mod swarm;
mod swarm_canary;
mod swarm_settings;
mod testbed;
mod trust;
mod warm;
mod webhooks;
