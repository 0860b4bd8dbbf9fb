//! Image retention: with `rollout.keep_images` the local images of the app's repository are
//! exactly those of the history (older ones are removed, none a rollback could need);
//! without it no image is ever removed. Each test pushes a repository of its own, since
//! retention in the shared one would remove images other tests are about to run. Against the
//! real Docker engine and registry, through the `fieldtrack` binary.

use crate::common::*;
use fieldtrack_testbed::{Bed, Site};

#[test]
fn retention_keeps_exactly_the_images_of_the_history() {
    let mut site = Site::new();
    let repo = OwnRepository::push(&site, "retain", &TAGS);
    site.set("repository", &toml_str(&repo.name));
    site.repository = repo.name.clone();
    site.set("rollout.keep_images", "true");
    site.set("history_limit", "3");

    for tag in &TAGS[..5] {
        deploy_ok(&site, tag);
    }

    assert_eq!(history(&site), "v5\nv4\nv3\n");
    assert_eq!(
        repo.local_tags(&site),
        ["v3", "v4", "v5"],
        "the local images of {} are the history's",
        repo.name
    );
    assert_converged(&site, "v5");
}

#[test]
fn without_keep_images_no_image_is_removed() {
    let mut site = Site::new();
    let repo = OwnRepository::push(&site, "keep", &TAGS[..5]);
    site.set("repository", &toml_str(&repo.name));
    site.set("rollout.keep_images", "false");
    site.set("history_limit", "3");

    for tag in &TAGS[..5] {
        deploy_ok(&site, tag);
    }

    assert_eq!(history(&site), "v5\nv4\nv3\n");
    assert_eq!(repo.local_tags(&site), ["v1", "v2", "v3", "v4", "v5"]);
}

/// The bed's healthy tags, in deploy order.
const TAGS: [&str; 7] = ["v1", "v2", "v3", "v4", "v5", "v6", "v7"];

/// A repository of the test's own in the bed's registry; its local images are removed when
/// it is dropped (the registry keeps the repository: tags are cheap, blobs are shared).
struct OwnRepository {
    name: String,
}

impl OwnRepository {
    /// Copies `tags` of the bed's images into `fieldtrack-test/{prefix}-{app}`.
    fn push(site: &Site, prefix: &str, tags: &[&str]) -> OwnRepository {
        let name = format!("{prefix}-{}", site.app);
        let mut repository = String::new();
        for tag in tags {
            repository = Bed::shared()
                .push_to_repository(tag, &name, tag)
                .unwrap_or_else(|e| panic!("cannot push {tag} to {name}: {e}"));
        }
        let repo = OwnRepository { name: repository };
        assert_eq!(
            repo.local_tags(site),
            Vec::<String>::new(),
            "nothing of the new repository is local yet"
        );
        repo
    }

    /// Tags of the repository's local images, sorted (`<none>` for an untagged one).
    fn local_tags(&self, site: &Site) -> Vec<String> {
        let out = site
            .docker()
            .args(["images", &self.name, "--format", "{{.Tag}}"])
            .output()
            .expect("docker runs");
        assert!(
            out.status.success(),
            "docker images: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut tags: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        tags.sort();
        tags
    }
}

impl Drop for OwnRepository {
    fn drop(&mut self) {
        let bed = Bed::shared();
        let listed = bed
            .docker()
            .args(["images", &self.name, "--format", "{{.Repository}}:{{.Tag}}"])
            .output();
        if let Ok(out) = listed {
            let refs: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.ends_with(":<none>"))
                .map(str::to_string)
                .collect();
            if !refs.is_empty() {
                let _ = bed.docker().arg("rmi").args(&refs).output();
            }
        }
    }
}
