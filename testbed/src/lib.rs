//! The real test bed fieldtrack is tested on: a Docker engine, a registry on loopback holding
//! the test images, and one nginx "site" per test. The same code serves the scripts (through
//! the `testbed` binary) and the Rust tests (through this library), so a test and the demo
//! see the same world.
//!
//! [`Bed::up`] is idempotent: it installs what is missing from Debian's packages, reuses a
//! running engine and registry or starts them, builds and pushes the test images only when
//! their sources changed, and sweeps sites left by dead test processes.
//!
//! [`Swarm::up`] adds a real multi-node Docker Swarm beside it, each node a `dockerd` in a
//! network namespace of its own (see `swarm.rs`), with [`SwarmSite`]s for the tests of
//! fieldtrack's `swarm` runtime.
//!
//! [`Machine`] is the production bed: a Debian 12 root file system (debootstrap, cached)
//! booted with its own systemd under `systemd-nspawn`, reached with [`Ssh`] (see
//! `machine.rs`).

mod bed;
mod machine;
pub mod procfs;
mod site;
mod smtp;
mod swarm;
pub mod util;

pub use bed::{Bed, TAGS};
pub use machine::{host_mirror, Machine, Ssh};
pub use site::{teardown_site_dir, Site, SiteOptions, LOG_FORMAT};
pub use smtp::{Mail, SmtpOptions, SmtpServer, SmtpTls};
pub use swarm::{
    edge_get, edge_listens, in_netns, teardown_swarm_site_dir, ClusterUse, EdgeLoad, LoadReport,
    Node, Swarm, SwarmSite, Task, DEFAULT_NODES, EDGE_ADDR, EDGE_NETNS,
};
