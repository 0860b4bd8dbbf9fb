//! `/proc/PID/stat`, read in one place. The tests and the bed ask a process whether it still
//! runs (a zombie does not: `kill(pid, 0)` cannot tell them apart), who its parent is (an
//! nginx master's workers, a swarm node's dockerd) and how much CPU it used; each of those
//! used to cut the line by hand.
//!
//! The line is `PID (COMM) STATE PPID ...`, and COMM may hold spaces and parentheses: the
//! fields are counted from the *last* `)`, as proc(5) advises.

use std::fs;
use std::io;

/// The fields of `/proc/PID/stat` that someone here reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `T`, ...
    pub state: char,
    /// Field 4.
    pub ppid: i32,
    /// Field 14: user CPU time, in clock ticks.
    pub utime: u64,
    /// Field 15: system CPU time, in clock ticks.
    pub stime: u64,
    /// Field 22: when the process started, in clock ticks after boot.
    pub start_time: u64,
}

impl Stat {
    /// Reads `/proc/PID/stat`; NotFound once the process is reaped.
    pub fn of(pid: i32) -> io::Result<Stat> {
        let line = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Stat::parse(&line).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat is not a stat line: {line:?}"),
            )
        })
    }

    /// Parses one stat line, None when it is not one.
    pub fn parse(line: &str) -> Option<Stat> {
        let (_, rest) = line.rsplit_once(')')?;
        // `rest` starts at field 3.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).copied();
        Some(Stat {
            state: field(3)?.chars().next()?,
            ppid: field(4)?.parse().ok()?,
            utime: field(14)?.parse().ok()?,
            stime: field(15)?.parse().ok()?,
            start_time: field(22)?.parse().ok()?,
        })
    }

    /// User plus system CPU time, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        self.utime + self.stime
    }

    /// A zombie: it exited and waits for its parent to reap it.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Whether `pid` exists and is no zombie: a child that exited but is not reaped yet still
/// answers `kill(pid, 0)`, this tells it apart.
pub fn runs(pid: i32) -> bool {
    pid > 0 && Stat::of(pid).is_ok_and(|stat| !stat.is_zombie())
}

/// The parent of `pid`, None when it is gone.
pub fn parent(pid: i32) -> Option<i32> {
    Stat::of(pid).ok().map(|stat| stat.ppid)
}

/// The processes whose parent is `ppid`, sorted (read from every `/proc/PID/stat`).
pub fn children(ppid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent(pid) == Some(ppid))
        .collect();
    pids.sort_unstable();
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    // Field numbers from proc(5); a COMM with a space and a `)` of its own.
    const LINE: &str = "4242 (we ird) x) S 17 4242 4242 0 -1 4194560 120 0 0 0 \
                        31 7 0 0 20 0 1 0 98765 1000000 200 18446744073709551615\n";

    #[test]
    fn fields_are_counted_from_the_last_parenthesis() {
        let stat = Stat::parse(LINE).expect("a stat line");
        assert_eq!(
            stat,
            Stat {
                state: 'S',
                ppid: 17,
                utime: 31,
                stime: 7,
                start_time: 98765,
            }
        );
        assert_eq!(stat.cpu_ticks(), 38);
        assert!(!stat.is_zombie());
    }

    #[test]
    fn a_truncated_line_is_none() {
        assert_eq!(Stat::parse("4242 (x) Z 1 2 3"), None);
        assert_eq!(Stat::parse("no parenthesis"), None);
    }

    #[test]
    fn this_process_runs_and_its_parent_is_read() {
        let me = std::process::id() as i32;
        assert!(runs(me));
        assert_eq!(
            parent(me),
            Some(ppid_from_status()),
            "the parent of this test process"
        );
        assert!(!runs(0));
    }

    #[test]
    fn a_reaped_child_is_gone_and_an_unreaped_one_is_a_zombie() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("true runs");
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        assert_eq!(parent(pid), Some(me));
        assert!(children(me).contains(&pid));
        // Exited, not reaped yet: a zombie, so it no longer runs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !Stat::of(pid).is_ok_and(|s| s.is_zombie()) {
            assert!(std::time::Instant::now() < deadline, "`true` never exited");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!runs(pid));
        child.wait().expect("the child is reaped");
        assert!(Stat::of(pid).is_err());
        assert_eq!(parent(pid), None);
    }

    /// The parent pid as /proc/self/status states it, a second source to check against.
    fn ppid_from_status() -> i32 {
        let status = fs::read_to_string("/proc/self/status").expect("status is readable");
        status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a PPid line")
    }
}
