//! The test bed itself, end to end: an image pulled from the bed's registry, run by
//! fieldtrack's runtime, answers through the site's nginx. If this fails, every other
//! real-engine test would fail for the same reason; this one says so first.

use std::collections::HashMap;
use std::time::Duration;

use fieldtrack::apply::runtime::{ContainerSpec, Docker, Runtime, RuntimeError};
use fieldtrack_testbed::{util, Bed, Site};

#[tokio::test]
async fn pulled_image_serves_its_version_through_the_site_nginx() {
    let bed = Bed::shared();
    let site = Site::new();
    let docker = Docker::connect(&bed.docker_host)
        .await
        .expect("engine answers");

    // A tag nobody pulled yet, so the pull really goes to the registry.
    let alias = format!("bed-{}", site.app);
    let image = bed.push_alias("v1", &alias).expect("alias pushed");
    assert_eq!(
        docker.image(&image).await.unwrap(),
        None,
        "not local before the pull"
    );
    docker
        .pull(&image)
        .await
        .expect("pull from the bed registry");
    assert!(
        docker.image(&image).await.unwrap().is_some(),
        "local after the pull"
    );

    docker
        .run(&ContainerSpec {
            name: format!("{}-blue", site.app),
            image,
            labels: HashMap::from([("fieldtrack.app".to_string(), site.app.clone())]),
            host_port: site.blue_port,
            container_port: 8080,
            env: vec![],
            stop_grace: Duration::from_secs(10),
        })
        .await
        .expect("container runs");

    // The site's upstream file points at blue until a first deployment.
    let served = util::wait_until(Duration::from_secs(10), || {
        site.served_version().as_deref() == Some("v1")
    });
    assert!(served, "nginx never served v1: {:?}", site.get("/version"));
    assert_eq!(site.containers(), vec![format!("{}-blue", site.app)]);
}

#[tokio::test]
async fn engine_api_version_is_negotiated_not_pinned() {
    let docker = Docker::connect(&Bed::shared().docker_host).await.unwrap();
    let version = docker.api_version();
    let (major, minor) = version.split_once('.').unwrap();
    assert_eq!(major, "1");
    assert!(minor.parse::<u32>().unwrap() >= 41, "api {version}");
}

#[tokio::test]
async fn a_tag_missing_from_the_registry_is_image_not_found() {
    let bed = Bed::shared();
    let docker = Docker::connect(&bed.docker_host).await.unwrap();
    let err = docker.pull(&bed.image("no-such-tag")).await.unwrap_err();
    assert!(matches!(err, RuntimeError::ImageNotFound { .. }), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn an_unreachable_engine_is_a_transient_error() {
    let err = Docker::connect("unix:///nonexistent/docker.sock")
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}
