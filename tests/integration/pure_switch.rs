//! Deploying the image the idle color still runs (after a deploy killed in its drain) is a
//! pure nginx switch back to it: no container is created or started, the same container
//! serves again, and the history records the image that served in between. Against the real
//! Docker engine (its event stream is the witness) and nginx, through the `fieldtrack` binary.

use crate::common::*;
use fieldtrack_testbed::Site;

#[test]
fn deploying_the_image_still_running_in_the_idle_color_is_a_pure_nginx_switch() {
    let mut site = Site::new();
    deploy_ok(&site, "v1");
    let v1 = container_name(&site, live_color(&site));
    let v1_id = container_id(&site, &v1);
    let v2 = container_name(&site, idle_color(&site));

    // `deploy v2` killed in the middle of its drain: v2 takes the traffic, v1 still runs.
    site.set("rollout.drain", "\"30s\"");
    let since = unix_now();
    let deploy = Spawned::start(&site, &["deploy", "v2"], None);
    wait_for(PATIENCE, "status.json at step draining", || {
        (status(&site)["step"] == "draining").then_some(())
    });
    deploy.kill();
    // The events query sees a container being created (else its silence below proves nothing).
    assert_eq!(
        container_events(&site, &since, &unix_now(), &["create"]),
        [format!("create {v2}")]
    );
    // `nginx -s reload` returns before the new workers take over.
    wait_for(PATIENCE, "nginx to serve v2", || {
        (served(&site).as_deref() == Some("v2")).then_some(())
    });
    assert_eq!(site.containers(), sorted(vec![v1.clone(), v2.clone()]));
    site.set("rollout.drain", "\"1s\"");

    let since = unix_now();
    let run = ft(&site, &["deploy", "v1"]);
    let until = unix_now();

    run.expect_code(0);
    assert_eq!(served(&site).as_deref(), Some("v1"));
    assert_eq!(live_color(&site), color_of(&v1));
    assert_eq!(
        container_id(&site, &v1),
        v1_id,
        "the v1 container is the same"
    );
    assert_eq!(
        site.containers(),
        vec![v1.clone()],
        "v2's container was removed"
    );
    let created = container_events(&site, &since, &until, &["create", "start"]);
    assert!(
        created.is_empty(),
        "no container was created or started: {created:?}"
    );
    // v2 served until v1 took over from it: recorded below v1.
    assert_eq!(history(&site), "v1\nv2\n");
    assert_converged(&site, "v1");
}
