//! What /proc says about a process: its CPU time, its memory, its children.

use std::fs;

use crate::Result;

/// CPU seconds (utime + stime) of a process, from /proc/PID/stat.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("odd /proc stat")?;
    // Fields after the command: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((ticks(14) + ticks(15)) as f64 * clock_tick())
}

/// A `Vm…` line of /proc/PID/status, in MiB.
pub fn vm_mib(pid: i32, key: &str) -> Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .ok_or_else(|| format!("no {key} for pid {pid}"))
}

/// The child processes of `parent`, from /proc.
pub fn children(parent: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// The length of a clock tick, the unit of /proc's CPU times, in seconds.
pub fn clock_tick() -> f64 {
    // SAFETY: sysconf only reads a system constant. rustix has it (param) in a feature the
    // workspace does not build otherwise.
    1.0 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}
