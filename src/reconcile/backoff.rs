//! The one retry schedule: a delay that starts at `min` and grows by `factor` after every
//! use, up to `max`, until a success resets it. Every place that waits before trying again
//! (the daemon after a transient error, a pass run in-process, the CLI's first connection to
//! the engine) keeps its own bounds in one of these, so the schedules cannot drift apart.

use std::time::Duration;

/// An exponential backoff. Pure: it only counts; the caller waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    factor: u32,
    /// The delay [`Backoff::next_delay`] returns next.
    current: Duration,
}

impl Backoff {
    /// Starts at `min`, multiplied by `factor` after each delay, never above `max`.
    pub const fn new(min: Duration, max: Duration, factor: u32) -> Backoff {
        Backoff {
            min,
            max,
            factor,
            current: min,
        }
    }

    /// The delay to wait now; the one after it grows.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current.min(self.max);
        self.current = delay.saturating_mul(self.factor).min(self.max);
        delay
    }

    /// Back to `min`, after a success (or anything that makes the old failures irrelevant).
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(mut backoff: Backoff, n: usize) -> Vec<Duration> {
        (0..n).map(|_| backoff.next_delay()).collect()
    }

    fn secs(s: &[u64]) -> Vec<Duration> {
        s.iter().copied().map(Duration::from_secs).collect()
    }

    #[test]
    fn doubles_from_min_and_stays_at_max() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300), 2);
        assert_eq!(
            delays(b, 11),
            secs(&[1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300])
        );
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 2);
        assert_eq!(delays(b, 7), secs(&[1, 2, 4, 8, 16, 30, 30]));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(2), 2);
        assert_eq!(
            delays(b, 4),
            [500, 1000, 2000, 2000].map(Duration::from_millis)
        );
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn a_factor_of_one_is_a_fixed_delay_and_max_caps_even_the_first() {
        let b = Backoff::new(Duration::from_secs(5), Duration::from_secs(60), 1);
        assert_eq!(delays(b, 3), secs(&[5, 5, 5]));
        let b = Backoff::new(Duration::from_secs(10), Duration::from_secs(3), 2);
        assert_eq!(delays(b, 2), secs(&[3, 3]));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX, u32::MAX);
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::MAX);
    }
}
