//! Health probes as the reconciler sees them: the [`Prober`] trait and what one probe
//! finds. The HTTP prober lives in `crate::apply::http_probe`.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};

/// What one probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    /// The app answered with this 2xx status.
    Healthy(u16),
    /// The app answered, with this non-2xx status.
    Unhealthy(u16),
    /// No answer: the reason in a few words ("connection refused", "timed out", ...).
    Unreachable(String),
}

impl ProbeOutcome {
    /// Whether the probe passed.
    pub fn is_healthy(&self) -> bool {
        matches!(self, ProbeOutcome::Healthy(_))
    }
}

/// Probes a color where it answers: the port it publishes on the loopback interface, or
/// each of its Swarm tasks on its node.
pub trait Prober: Send + Sync {
    /// One probe of the app published on `127.0.0.1:port`. Never fails: every problem is an
    /// outcome.
    fn probe(&self, port: u16) -> impl Future<Output = ProbeOutcome> + Send {
        self.probe_at(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
    }

    /// One probe of the app at `addr`. Never fails: every problem is an outcome.
    fn probe_at(&self, addr: SocketAddr) -> impl Future<Output = ProbeOutcome> + Send;
}
