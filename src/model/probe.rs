//! Health probes as the reconciler sees them: the [`Prober`] trait, what one probe finds,
//! and which answers count as healthy ([`Expect`]). The HTTP prober lives in
//! `crate::apply::http_probe`.

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;

/// What one probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    /// The app answered with this status, one that `health.expect` counts as healthy
    /// (any 2xx unless the config says otherwise).
    Healthy(u16),
    /// The app answered, with this status that `health.expect` does not count as healthy.
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

/// The HTTP status codes a probe counts as healthy: `health.expect`, any 2xx by default.
/// Never empty; every code between 100 and 599.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    ranges: Vec<RangeInclusive<u16>>,
}

/// The codes HTTP has: an answer outside them is not one `expect` can name.
pub const STATUS_CODES: RangeInclusive<u16> = 100..=599;

impl Expect {
    /// Any 2xx: what counts as healthy unless the config says otherwise.
    pub fn any_2xx() -> Expect {
        Expect {
            ranges: vec![200..=299],
        }
    }

    /// The codes of `ranges`, each within [`STATUS_CODES`] and not empty; None otherwise,
    /// or when there are none.
    pub fn new(ranges: Vec<RangeInclusive<u16>>) -> Option<Expect> {
        let valid = |r: &RangeInclusive<u16>| {
            r.start() <= r.end()
                && STATUS_CODES.contains(r.start())
                && STATUS_CODES.contains(r.end())
        };
        (!ranges.is_empty() && ranges.iter().all(valid)).then_some(Expect { ranges })
    }

    /// Whether an answer with `code` counts as healthy.
    pub fn contains(&self, code: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&code))
    }
}

impl Default for Expect {
    fn default() -> Expect {
        Expect::any_2xx()
    }
}

/// As the config writes it: `2xx`, `200`, `300-399`, joined by ", ".
impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let (start, end) = (*r.start(), *r.end());
            if start == end {
                write!(f, "{start}")?;
            } else if start % 100 == 0 && end == start + 99 {
                write!(f, "{}xx", start / 100)?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

/// What frameworks answer a request whose Host they do not accept: Django 400 (DisallowedHost),
/// Rails 7 403 (HostAuthorization), and 421 Misdirected Request.
const HOST_REFUSED: [u16; 3] = [400, 403, 421];

/// The likely cause of an unhealthy answer, when it is one: a probe sent without
/// `health.host` carries `Host: {addr}`, which apps that check the Host (Rails
/// `config.hosts`, Django `ALLOWED_HOSTS`) refuse although they are up. None for any other
/// outcome, or when `health.host` is set.
pub fn host_hint(outcome: &ProbeOutcome, addr: SocketAddr, host: Option<&str>) -> Option<String> {
    match outcome {
        ProbeOutcome::Unhealthy(code) if host.is_none() && HOST_REFUSED.contains(code) => {
            Some(format!(
                "the app may refuse the Host {addr} that probes send without health.host \
                 (Rails config.hosts, Django ALLOWED_HOSTS): set health.host to a name it \
                 accepts"
            ))
        }
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_defaults_to_any_2xx() {
        let expect = Expect::default();
        assert!(expect.contains(200) && expect.contains(204) && expect.contains(299));
        assert!(!expect.contains(199) && !expect.contains(300) && !expect.contains(403));
        assert_eq!(expect.to_string(), "2xx");
    }

    #[test]
    fn expect_holds_codes_and_ranges_and_shows_them_as_written() {
        let expect = Expect::new(vec![200..=200, 204..=204, 300..=399, 401..=403]).unwrap();
        for code in [200, 204, 300, 350, 399, 401, 403] {
            assert!(expect.contains(code), "{code}");
        }
        for code in [201, 299, 400, 404, 500] {
            assert!(!expect.contains(code), "{code}");
        }
        assert_eq!(expect.to_string(), "200, 204, 3xx, 401-403");
    }

    #[test]
    fn expect_refuses_nothing_backwards_and_codes_http_has_not() {
        assert_eq!(Expect::new(vec![]), None);
        let (high, low) = (300, 200);
        assert_eq!(Expect::new(vec![high..=low]), None);
        assert_eq!(Expect::new(vec![99..=200]), None);
        assert_eq!(Expect::new(vec![200..=600]), None);
        assert!(Expect::new(vec![100..=599]).is_some());
    }

    #[test]
    fn host_hint_only_for_a_refused_host_without_health_host() {
        let addr: SocketAddr = "127.0.0.1:3001".parse().unwrap();
        for code in [400, 403, 421] {
            let hint = host_hint(&ProbeOutcome::Unhealthy(code), addr, None).unwrap();
            assert!(hint.contains("Host 127.0.0.1:3001"), "{hint}");
            assert!(hint.contains("set health.host"), "{hint}");
            assert!(hint.contains("ALLOWED_HOSTS") && hint.contains("config.hosts"));
            let set = host_hint(
                &ProbeOutcome::Unhealthy(code),
                addr,
                Some("api.example.com"),
            );
            assert_eq!(set, None);
        }
        for outcome in [
            ProbeOutcome::Unhealthy(404),
            ProbeOutcome::Unhealthy(500),
            ProbeOutcome::Healthy(403),
            ProbeOutcome::Unreachable("connection refused".into()),
        ] {
            assert_eq!(host_hint(&outcome, addr, None), None, "{outcome:?}");
        }
    }
}
