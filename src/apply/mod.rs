//! The adapters: one module per outside system fieldtrack talks to, each implementing a
//! trait of [`crate::model`] so the decision logic can be tested with fakes.
//!
//! - [`docker`]: the Docker Engine API client (connecting, its errors, pulls with the
//!   registry credentials of the Docker config) and [`docker::Docker`], one local engine;
//! - [`swarm`]: a Docker Swarm manager, a color as a service;
//! - [`engine`]: whichever of the two `[runtime] kind` names;
//! - [`nginx`]: the upstream file and nginx's test and reload commands;
//! - [`http_probe`]: the health probes;
//! - [`hooks`]: the operator's `pre_switch` and `post_deploy` programs.

pub(crate) mod command;
pub mod docker;
pub mod engine;
pub mod hooks;
pub mod http_probe;
pub mod nginx;
pub mod swarm;
