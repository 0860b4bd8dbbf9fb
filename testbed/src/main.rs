//! `testbed`: the scripts' door to the test bed.
//!
//! ```text
//! testbed up                 bring everything up; print `export KEY=value` lines
//! testbed down               stop sites, the registry and our own dockerd
//! testbed site new [APP]     make a kept site; print its folder and addresses
//! testbed site down DIR      tear a kept site down
//! testbed swarm up [NODES]   the main bed, then a swarm of NODES (default 3) nodes in
//!                            network namespaces; print its `export KEY=value` lines
//! testbed swarm down         stop and remove the swarm: processes, namespaces, mounts
//! testbed swarm site new [APP]  make a kept site on the swarm that is up (any size); print
//!                               its folder and addresses
//! testbed swarm site down DIR   tear a kept swarm site down
//! testbed machine rootfs     make the production bed's Debian 12 root file system once
//!                            (debootstrap, cached); print its folder
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use fieldtrack_testbed::{Bed, Machine, Site, SiteOptions, Swarm, SwarmSite, DEFAULT_NODES};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["up"] => Bed::up().map(|bed| print!("{}", bed.env_lines())),
        ["down"] => Bed::down(),
        ["site", "new", rest @ ..] if rest.len() <= 1 => Bed::up().and_then(|bed| {
            let options = SiteOptions {
                keep: true,
                app: rest.first().map(|s| s.to_string()),
                ..SiteOptions::default()
            };
            Site::create(&bed, options).map(|site| {
                print!("{}", bed.env_lines());
                println!("export SITE_DIR={}", site.dir.display());
                println!("export SITE_CONFIG={}", site.config_path.display());
                println!("export SITE_URL=http://{}", site.nginx_addr());
                println!("export SITE_APP={}", site.app);
            })
        }),
        ["site", "down", dir] => Bed::up().map(|bed| {
            fieldtrack_testbed::teardown_site_dir(&bed, &PathBuf::from(dir));
        }),
        ["swarm", "up", rest @ ..] if rest.len() <= 1 => match rest.first().map(|n| n.parse()) {
            Some(Err(_)) => {
                eprintln!("testbed: NODES is a number, not {:?}", rest[0]);
                return ExitCode::from(2);
            }
            nodes => Bed::up()
                .and_then(|bed| Swarm::up(&bed, nodes.map_or(DEFAULT_NODES, |n| n.unwrap())))
                .map(|swarm| print!("{}", swarm.env_lines())),
        },
        ["swarm", "down"] => Swarm::down(),
        ["machine", "rootfs"] => Machine::rootfs().map(|root| println!("{}", root.display())),
        ["swarm", "site", "new", rest @ ..] if rest.len() <= 1 => Bed::up()
            .and_then(|bed| Swarm::existing(&bed))
            .and_then(|swarm| {
                let options = SiteOptions {
                    keep: true,
                    app: rest.first().map(|s| s.to_string()),
                    ..SiteOptions::default()
                };
                SwarmSite::create(&swarm, options).map(|site| {
                    print!("{}", swarm.env_lines());
                    println!("export SITE_DIR={}", site.dir.display());
                    println!("export SITE_CONFIG={}", site.config_path.display());
                    println!("export SITE_URL=http://{}", site.nginx_addr());
                    println!("export SITE_APP={}", site.app);
                })
            }),
        ["swarm", "site", "down", dir] => Bed::up()
            .and_then(|bed| Swarm::existing(&bed))
            .map(|swarm| fieldtrack_testbed::teardown_swarm_site_dir(&swarm, &PathBuf::from(dir))),
        _ => {
            eprintln!(
                "usage: testbed up | down | site new [APP] | site down DIR\n       testbed swarm up [NODES] | swarm down | swarm site new [APP] | swarm site down DIR\n       testbed machine rootfs"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testbed: {e}");
            ExitCode::FAILURE
        }
    }
}
