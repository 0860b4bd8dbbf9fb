//! d. The daemon idle (CPU time, RSS) on a site of its own while sections a and b run, then
//! its memory during a deployment.

use std::thread;
use std::time::{Duration, Instant};

use fieldtrack_testbed::Site;

use crate::daemon::Daemon;
use crate::procfs::{clock_tick, cpu_seconds, vm_mib};
use crate::report::{verdict, Report, Section, Target};
use crate::timing::POLL;
use crate::tools::Tools;
use crate::Result;

/// A daemon left alone on its own site while other sections run.
pub struct IdleDaemon {
    site: Site,
    daemon: Daemon,
    rss_start: f64,
    /// Sampled exactly `idle_secs` after the start: (seconds, CPU seconds used, VmRSS, VmHWM).
    sample: thread::JoinHandle<Result<(f64, f64, f64, f64)>>,
}

impl IdleDaemon {
    pub fn start(tools: &Tools, idle_secs: u64) -> Result<IdleDaemon> {
        eprintln!("bench: d. the daemon idle for {idle_secs} s (beside sections a and b)");
        // Production defaults for the daemon: resync 30 s, drain 5 s.
        let site = tools.site("5s")?;
        tools.deploy_untimed(&site, "v1")?;
        let daemon = Daemon::start(tools, &site)?;
        daemon.wait_converged(&site, "v1")?;
        // Let the first pass settle before the idle window starts.
        thread::sleep(Duration::from_secs(1));
        let pid = daemon.pid();
        let rss_start = vm_mib(pid, "VmRSS")?;
        let cpu_at_start = cpu_seconds(pid)?;
        let since = Instant::now();
        let sample = thread::spawn(move || {
            thread::sleep(Duration::from_secs(idle_secs));
            let cpu = cpu_seconds(pid)? - cpu_at_start;
            let idle_for = since.elapsed().as_secs_f64();
            Ok((idle_for, cpu, vm_mib(pid, "VmRSS")?, vm_mib(pid, "VmHWM")?))
        });
        Ok(IdleDaemon {
            site,
            daemon,
            rss_start,
            sample,
        })
    }

    pub fn finish(self, tools: &Tools, report: &mut Report) -> Result<()> {
        if !self.sample.is_finished() {
            eprintln!("bench: d. waiting for the end of the idle window");
        }
        let (idle_for, cpu, rss_idle, hwm_idle) = self
            .sample
            .join()
            .map_err(|_| "the idle sampler panicked".to_string())??;
        let pid = self.daemon.pid();
        // A deployment through the daemon, sampling RSS meanwhile.
        let mut child = tools
            .deploy(&self.site, "v2")
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut rss_peak_sampled = 0.0f64;
        let status = loop {
            rss_peak_sampled = rss_peak_sampled.max(vm_mib(pid, "VmRSS").unwrap_or(0.0));
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            thread::sleep(POLL);
        };
        if !status.success() {
            return Err(format!("deploy v2 through the daemon failed ({status})"));
        }
        let hwm_deploy = vm_mib(pid, "VmHWM")?;
        let rss_after = vm_mib(pid, "VmRSS")?;
        self.daemon.stop()?;

        let mut s = Section::new(
            "d. The daemon: idle, and during a deployment",
            &["figure", "value", "target"],
        );
        let tick = clock_tick();
        s.row(vec![
            format!(
                "CPU time while idle for {idle_for:.0} s (utime + stime, in ticks of {tick} s)"
            ),
            format!("{cpu:.2} s ({:.3} % of one core)", 100.0 * cpu / idle_for),
            "-".into(),
        ]);
        s.row(vec![
            "RSS (VmRSS) at the start of the idle window / at its end".into(),
            format!("{:.1} MiB / {rss_idle:.1} MiB", self.rss_start),
            format!("idle RSS under 20 MiB: {}", verdict(rss_idle < 20.0)),
        ]);
        s.row(vec![
            "peak RSS (VmHWM) before the deployment / after it".into(),
            format!("{hwm_idle:.1} MiB / {hwm_deploy:.1} MiB"),
            "-".into(),
        ]);
        s.row(vec![
            "RSS sampled every 10 ms during the deployment: max / after".into(),
            format!("{rss_peak_sampled:.1} MiB / {rss_after:.1} MiB"),
            "-".into(),
        ]);
        s.notes.push(
            "The daemon on its own site with rollout.resync 30s (so the idle window holds two full passes), drain 5s; the deployment is `fieldtrack deploy v2` followed through the daemon.".into(),
        );
        report.targets.push(Target {
            target: "idle RSS under 20 MiB".into(),
            measured: format!("{rss_idle:.1} MiB"),
            met: rss_idle < 20.0,
        });
        report.sections.push(s);
        Ok(())
    }
}
