//! Digest pinning: the digest fieldtrack records in status.json, audit.jsonl and the history
//! is the one the registry gave for the image that was pulled, as `docker image inspect`
//! reports it. Against the real Docker engine and registry, through the `fieldtrack` binary.

use crate::common::*;
use fieldtrack_testbed::Site;

#[test]
fn digests_in_status_audit_and_history_are_the_registry_digests() {
    let site = Site::new();
    deploy_ok(&site, "v1");
    deploy_ok(&site, "v2");
    let digest = |tag: &str| {
        let digest = repo_digest(&site, &site.image(tag), &site.repository);
        assert!(is_digest(&digest), "{tag}: {digest}");
        digest
    };
    let (v1, v2) = (digest("v1"), digest("v2"));
    assert_ne!(v1, v2);

    let status = status(&site);
    assert_eq!(status["digest"], v2.as_str(), "{status:#}");

    let audit = audit(&site);
    for (tag, digest) in [("v1", &v1), ("v2", &v2)] {
        let record = audit
            .iter()
            .find(|r| r["image"] == tag && r["outcome"] == "succeeded")
            .unwrap_or_else(|| panic!("the audit log records {tag}: {audit:#?}"));
        assert_eq!(record["digest"], digest.as_str(), "{record:#}");
    }

    let run = ft(&site, &["history", "--json"]);
    run.expect_code(0);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).expect("history is JSON");
    let digests: Vec<(&str, &str)> = shown
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| {
            (
                e["image"].as_str().unwrap_or_default(),
                e["digest"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(digests, [("v2", v2.as_str()), ("v1", v1.as_str())]);
}

/// `sha256:` and 64 lowercase hex digits.
fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    })
}
