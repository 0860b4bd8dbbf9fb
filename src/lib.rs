//! fieldtrack: a reconciler that keeps one containerised web app deployed blue/green behind
//! nginx, converging the real world toward a desired-state file.
//!
//! The module tree follows the reconcile loop. At the bottom, [`model`] holds the domain's
//! types and the traits of the outside systems, [`image`] the image reference grammar, and
//! [`nginx_conf`] nginx's config read and written as text (pure). [`config`] and [`desired`]
//! say what should be, [`observe`] finds what is, [`plan`] decides (pure), [`apply`] holds the
//! adapters by system (docker, swarm, nginx, the HTTP probe, hooks), [`reconcile`] runs one
//! pass of all that, and [`state`] owns the files fieldtrack writes (history, status, audit
//! log, lock). [`secrets`] keeps the env file's values out of every message,
//! [`notifications`] tells people, [`daemon`] runs passes on every change, and [`cli`] is
//! the operator's door.
pub mod apply;
#[cfg(test)]
mod architecture_tests;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod desired;
pub mod image;
pub mod metrics;
pub mod model;
pub mod nginx_conf;
pub mod notifications;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod secrets;
pub mod state;

/// The test hook: with `FIELDTRACK_TEST_PAUSE_AT=<point>` the process blocks forever when it
/// reaches that point (a reconcile step, `recording`, `reload`: the upstream file written,
/// nginx neither tested nor reloaded yet, or `failed`: the daemon recorded a failed pass),
/// so a test can SIGKILL it exactly there, or look at what it wrote.
///
/// Compiled into debug builds only (the tests' binary); a release build, the one packaged and
/// run in production, has no such variable to stop it with.
pub(crate) async fn test_pause_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("FIELDTRACK_TEST_PAUSE_AT").as_deref() == Ok(point) {
        eprintln!("fieldtrack: test pause at {point}");
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
