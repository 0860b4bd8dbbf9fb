//! fieldtrack: a reconciler that keeps one containerised web app deployed blue/green behind
//! nginx, converging the real world toward a desired-state file.
//!
//! The module tree follows the reconcile loop: [`config`] and [`desired`] say what should be,
//! [`observe`] finds what is, [`plan`] decides (pure), [`apply`] talks to the outside world
//! (container runtime, proxy, health probes), [`reconcile`] runs one pass of all that, and
//! [`state`] owns the files fieldtrack writes (history, status, audit log, lock). [`cli`]
//! is the operator's door.

pub mod apply;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod desired;
pub mod metrics;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod state;
