//! `testbed`: the scripts' door to the test bed.
//!
//! ```text
//! testbed up                 bring everything up; print `export KEY=value` lines
//! testbed down               stop sites, the registry and our own dockerd
//! testbed site new [APP]     make a kept site; print its folder and addresses
//! testbed site down DIR      tear a kept site down
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use fieldtrack_testbed::{Bed, Site, SiteOptions};

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
        _ => {
            eprintln!("usage: testbed up | down | site new [APP] | site down DIR");
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
