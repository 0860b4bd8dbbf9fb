//! A canary step's share of the traffic as nginx weights, pure. nginx's weighted round robin
//! weighs servers, not colors: with one server a side, weights `(100 - share, share)` give
//! the canary its share; on Swarm each color has one server per task, and the same weights
//! on 3 stable servers and 1 canary server would give the canary 1 request in 28, not 10%.
//! [`shared`] weighs each server by the number of servers on the other side instead, so the
//! share holds whatever the replicas.
//!
//! nginx's limits: `weight=` must be a positive integer (`weight=0` is refused as an invalid
//! parameter, which is why [`crate::nginx_conf::upstream::render_weighted`] writes `down`
//! for 0) and is read with `ngx_atoi`, so any value up to nginx's `ngx_int_t` is taken; the
//! documentation names no upper bound. The weights here are at most `99 ×` a color's server
//! count, reduced by their gcd, far inside that.

/// The weighted servers of a step that sends `share` percent of the requests to `canary`
/// (servers are `SocketAddr`s; generic, so that plan names no `std::net`):
/// the stable servers first (the first server's port tells the live color), then the canary
/// servers, in the order given. Every stable server gets `(100 - share) × canary.len()`, every
/// canary server `share × stable.len()`, both divided by their gcd: the canary's servers then
/// weigh `share × n_s × n_c` against the stable ones' `(100 - share) × n_c × n_s`, exactly
/// `share` percent of nginx's round robin.
///
/// `share` above 100 counts as 100. A share of 0 (or 100) gives the side that gets nothing a
/// weight of 0, which the upstream file writes as `down`. With no server on one side, the
/// other side's servers are weighted 1 each: there is nothing to share with.
pub fn shared<S: Copy>(share: u32, stable: &[S], canary: &[S]) -> Vec<(S, u32)> {
    let share = u64::from(share.min(100));
    let (n_stable, n_canary) = (stable.len() as u64, canary.len() as u64);
    let (w_stable, w_canary) = if n_stable == 0 || n_canary == 0 {
        (1, 1)
    } else {
        let (s, c) = ((100 - share) * n_canary, share * n_stable);
        let g = gcd(s, c);
        (s / g, c / g)
    };
    // A replica count of tens keeps these small; saturating only guards absurd inputs.
    let weight = |w: u64| u32::try_from(w).unwrap_or(u32::MAX);
    stable
        .iter()
        .map(|a| (*a, weight(w_stable)))
        .chain(canary.iter().map(|a| (*a, weight(w_canary))))
        .collect()
}

/// Greatest common divisor; `gcd(0, x) == x`. Never 0 here: one of the two is not 0.
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    /// `n` servers on `port`, one per node address 10.0.0.1, 10.0.0.2, ...
    fn servers(n: usize, port: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|k| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, k as u8)), port))
            .collect()
    }

    /// The canary's share of the round robin, as (canary weight, total weight).
    fn canary_part(weights: &[(SocketAddr, u32)], canary_port: u16) -> (u64, u64) {
        let total: u64 = weights.iter().map(|(_, w)| u64::from(*w)).sum();
        let canary: u64 = weights
            .iter()
            .filter(|(a, _)| a.port() == canary_port)
            .map(|(_, w)| u64::from(*w))
            .sum();
        (canary, total)
    }

    #[test]
    fn one_server_a_side_gives_the_share_and_its_complement_reduced() {
        let (stable, canary) = (servers(1, 3001), servers(1, 3002));
        let w = shared(10, &stable, &canary);
        assert_eq!(w, vec![(stable[0], 9), (canary[0], 1)]);
        let w = shared(50, &stable, &canary);
        assert_eq!(w, vec![(stable[0], 1), (canary[0], 1)]);
        // No common divisor: today's weights as they are.
        let w = shared(7, &stable, &canary);
        assert_eq!(w, vec![(stable[0], 93), (canary[0], 7)]);
    }

    #[test]
    fn three_stable_replicas_and_one_canary_replica_keep_ten_percent() {
        let (stable, canary) = (servers(3, 3001), servers(1, 3002));
        let w = shared(10, &stable, &canary);
        // 3 × 3 against 1: 1 request in 10 to the canary, not 1 in 28.
        assert_eq!(
            w,
            vec![
                (stable[0], 3),
                (stable[1], 3),
                (stable[2], 3),
                (canary[0], 1)
            ]
        );
    }

    #[test]
    fn stable_servers_come_first_in_the_order_given_then_the_canary_servers() {
        let (stable, canary) = (servers(2, 3001), servers(3, 3002));
        let w = shared(50, &stable, &canary);
        let addrs: Vec<SocketAddr> = w.iter().map(|(a, _)| *a).collect();
        assert_eq!(addrs, [stable, canary].concat());
        // Each of the 2 stable servers weighs 3, each of the 3 canary servers 2: 6 and 6.
        let weights: Vec<u32> = w.iter().map(|(_, weight)| *weight).collect();
        assert_eq!(weights, vec![3, 3, 2, 2, 2]);
    }

    #[test]
    fn a_share_of_nothing_or_everything_takes_the_other_side_down() {
        let (stable, canary) = (servers(2, 3001), servers(1, 3002));
        assert_eq!(
            shared(0, &stable, &canary),
            vec![(stable[0], 1), (stable[1], 1), (canary[0], 0)]
        );
        assert_eq!(
            shared(100, &stable, &canary),
            vec![(stable[0], 0), (stable[1], 0), (canary[0], 1)]
        );
        assert_eq!(shared(250, &stable, &canary), shared(100, &stable, &canary));
    }

    #[test]
    fn with_no_server_on_one_side_the_other_side_takes_weight_one() {
        let canary = servers(2, 3002);
        assert_eq!(
            shared(10, &[], &canary),
            vec![(canary[0], 1), (canary[1], 1)]
        );
        assert!(shared::<SocketAddr>(10, &[], &[]).is_empty());
    }

    proptest! {
        #[test]
        fn the_canarys_share_is_exact_whatever_the_replicas(
            n_stable in 1usize..=12,
            n_canary in 1usize..=12,
            share in 1u32..=99,
        ) {
            let w = shared(share, &servers(n_stable, 3001), &servers(n_canary, 3002));
            prop_assert_eq!(w.len(), n_stable + n_canary);
            // nginx refuses weight=0; every server of a real step takes part.
            prop_assert!(w.iter().all(|(_, weight)| *weight >= 1));
            let (canary, total) = canary_part(&w, 3002);
            prop_assert_eq!(canary * 100, u64::from(share) * total, "{:?}", w);
            // Reduced: the shortest round robin cycle that holds the share.
            let (ws, wc) = (w[0].1, w[n_stable].1);
            prop_assert_eq!(gcd(u64::from(ws), u64::from(wc)), 1);
        }
    }
}
