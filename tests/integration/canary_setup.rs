//! What a canary test stands on, on the real bed: a site's nginx logs every request in
//! fieldtrack's JSON format to the file its config names, and fieldtrack's own reader makes
//! sense of it; the test images `err5` and `lag` misbehave exactly as the canary tests
//! assume (one request in five answered 500, 300 ms on every path but `/health`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{self, deploy_ok};
use fieldtrack::config::Config;
use fieldtrack::observe::access_log::{self, tally, Figures, Request, Tail};
use fieldtrack_testbed::{Site, LOG_FORMAT};

#[test]
fn the_bed_declares_fieldtracks_log_format_word_for_word() {
    // The bed keeps a copy (it cannot depend on fieldtrack): the two must not drift apart.
    assert_eq!(LOG_FORMAT, access_log::LOG_FORMAT);
}

/// `n` GETs of `path` through the site's nginx from `threads` threads at once: the statuses
/// and bodies (0 and "" for no answer).
fn load(site: &Site, path: &str, threads: usize, n: usize) -> Vec<(u16, String)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    (0..n / threads)
                        .map(|_| site.get(path).unwrap_or_default())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Reads the log until it holds `n` more requests (nginx writes a line when the request
/// ends, which may come a moment after the client got its answer).
fn logged(tail: &mut Tail, n: usize) -> Vec<Request> {
    let mut requests = Vec::new();
    common::wait_for(
        Duration::from_secs(10),
        "the requests in the access log",
        || {
            requests.extend(tail.read_new().unwrap());
            (requests.len() >= n).then_some(())
        },
    );
    requests
}

/// Each request's figures by the color port its last try went to.
fn by_port(site: &Site, requests: &[Request]) -> HashMap<u16, Figures> {
    let mut figures = HashMap::new();
    let ports = [site.blue_port, site.green_port];
    tally(&mut figures, requests, |addr: SocketAddr| {
        ports.contains(&addr.port()).then_some(addr.port())
    });
    figures
}

#[test]
fn a_site_logs_every_proxied_request_where_its_config_says_in_fieldtracks_format() {
    let site = Site::new();
    let cfg = Config::load(&site.config_path).expect("the site's config loads");
    assert_eq!(
        cfg.nginx.access_log.as_deref(),
        Some(site.access_log().as_path())
    );
    deploy_ok(&site, "v1");
    let live = common::upstream_port(&site);

    let mut tail = Tail::from_end(&site.access_log());
    let answers = load(&site, "/version", 2, 20);
    assert!(
        answers.iter().all(|(s, b)| *s == 200 && b == "v1\n"),
        "{answers:?}"
    );
    let requests = logged(&mut tail, 20);
    assert_eq!(requests.len(), 20, "{requests:?}");
    assert_eq!(tail.skipped, 0, "every line is in fieldtrack's format");
    for r in &requests {
        assert_eq!(r.status, 200);
        assert_eq!(r.tries.len(), 1, "{r:?}");
        assert_eq!(r.tries[0].addr, SocketAddr::from(([127, 0, 0, 1], live)));
        assert_eq!(r.tries[0].status, Some(200));
    }
    let figures = by_port(&site, &requests);
    assert_eq!(figures[&live].requests, 20);
    assert_eq!(figures[&live].errors, 0);
}

#[test]
fn err5_answers_500_to_exactly_one_request_in_five_under_concurrency() {
    let site = Site::new();
    // /health is never counted: the health gate passes and the probes of the drain do not
    // shift the count.
    deploy_ok(&site, "err5");
    let live = common::upstream_port(&site);
    let mut tail = Tail::from_end(&site.access_log());

    // Any 100 requests in a row hold exactly 20 fifth ones, whatever came before.
    let answers = load(&site, "/", 4, 100);
    let errors = answers
        .iter()
        .filter(|(s, b)| *s == 500 && b == "error from err5\n")
        .count();
    let ok = answers
        .iter()
        .filter(|(s, b)| *s == 200 && b == "err5\n")
        .count();
    assert_eq!((errors, ok), (20, 80), "{answers:?}");

    // What the canary's judge will see: 100 requests of the live color, 20 errors.
    let figures = by_port(&site, &logged(&mut tail, 100));
    assert_eq!(figures[&live].requests, 100);
    assert_eq!(figures[&live].errors, 20);
    assert_eq!(figures[&live].failed_tries, 20);
    // Health stays fine throughout.
    let health = SocketAddr::from(([127, 0, 0, 1], live));
    for _ in 0..10 {
        assert_eq!(
            fieldtrack_testbed::util::http_get(health, "/health", Duration::from_secs(2))
                .unwrap()
                .0,
            200
        );
    }
}

#[test]
fn lag_takes_300_ms_on_every_path_but_health() {
    let site = Site::new();
    // A health probe of lag is as fast as v1's: the gate passes in the usual time.
    deploy_ok(&site, "lag");
    let live = common::upstream_port(&site);
    let direct = SocketAddr::from(([127, 0, 0, 1], live));
    let started = Instant::now();
    let (status, _) =
        fieldtrack_testbed::util::http_get(direct, "/health", Duration::from_secs(2)).unwrap();
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );

    let mut tail = Tail::from_end(&site.access_log());
    let started = Instant::now();
    let answers = load(&site, "/", 4, 8);
    assert!(
        answers.iter().all(|(s, b)| *s == 200 && b == "lag\n"),
        "{answers:?}"
    );
    // Concurrent: two rounds of 300 ms, not eight.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(2000),
        "{took:?}"
    );
    let figures = by_port(&site, &logged(&mut tail, 8));
    let p50 = figures[&live].quantile(0.5).unwrap();
    assert!((0.3..1.0).contains(&p50), "p50 {p50}");
    assert_eq!(figures[&live].errors, 0);
}
