//! Resource sampling of instance processes from /proc.

use serde::Serialize;

/// One reading of a process's resources.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcSample {
    /// Resident set size, KiB.
    pub rss_kib: u64,
    /// Proportional set size, KiB: shared pages split among their users, so a sum over
    /// processes counts each page once.
    pub pss_kib: u64,
    /// User + system CPU time consumed so far, milliseconds.
    pub cpu_ms: u64,
}

/// Sample the process tree rooted at `pid` (an instance is its runtime and everything it
/// started: bubblewrap's helpers, a `provided` bootstrap's children), or `None` if `pid`
/// is gone. CPU time includes children already reaped, so it never goes backwards.
pub fn sample(pid: u32) -> Option<ProcSample> {
    sum_tree(pid, true)
}

/// How long a [`TreeReader`] trusts the members it found before walking the tree again.
const TREE_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// An instance's process tree, remembered between readings: the members are found again
/// (a walk of every thread's `children` list) at most once per [`TREE_REFRESH`], or when
/// one is gone; a reading in between reads one `stat` file per member. This is what lets
/// the dispatcher read an instance at every call's start and end.
#[derive(Debug)]
pub struct TreeReader {
    root: u32,
    members: std::sync::Mutex<Option<(std::time::Instant, Vec<u32>)>>,
}

impl TreeReader {
    pub fn new(root: u32) -> TreeReader {
        TreeReader {
            root,
            members: std::sync::Mutex::new(None),
        }
    }

    /// CPU time and RSS of the tree (the cheap part of a [`sample`]: no smaps walk), for
    /// the concurrency controller and the meter; `None` if the root is gone.
    pub fn resources(&self) -> Option<shoal_dispatch::Resources> {
        // A member gone since the walk (the tree changed): walk again.
        sum_members(&self.members()).or_else(|| sum_members(&self.walk()))
    }

    /// The members, as remembered if the walk is recent, else walked again.
    fn members(&self) -> Vec<u32> {
        let cached = self.members.lock().unwrap_or_else(|e| e.into_inner());
        match cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < TREE_REFRESH)
        {
            Some((_, members)) => members.clone(),
            None => {
                drop(cached);
                self.walk()
            }
        }
    }

    /// Walk the tree again and remember it.
    fn walk(&self) -> Vec<u32> {
        let members = tree(self.root);
        *self.members.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), members.clone()));
        members
    }

    /// How long the tree's threads have waited, runnable, for a CPU (the kernel's
    /// `run_delay`, field 2 of each thread's `schedstat`), summed; `None` if the root is
    /// gone or the kernel keeps no schedstats. Threads that exited take their share with
    /// them, so the sum can step back; the caller treats that as no wait. Read once per
    /// sampling interval for the concurrency controller, not per call: it opens one file
    /// per thread.
    pub fn run_wait(&self) -> Option<std::time::Duration> {
        let mut total_ns: u64 = 0;
        let mut seen = false;
        for member in &self.members() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{member}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                    continue;
                };
                if let Some(ns) = run_delay_ns(&text) {
                    total_ns = total_ns.saturating_add(ns);
                    seen = true;
                }
            }
        }
        seen.then(|| std::time::Duration::from_nanos(total_ns))
    }
}

impl TreeReader {
    /// Whether the instance's runtime process (the first member of the tree that is not
    /// bubblewrap's) is stopped (`SIGSTOP`, or traced): it cannot answer anything, so it
    /// must get no new calls. Read once per sampling interval.
    pub fn frozen(&self) -> bool {
        for member in self.members() {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{member}/stat")) else {
                continue;
            };
            let Some((name, state)) = name_and_state(&stat) else {
                continue;
            };
            if name == "bwrap" {
                continue;
            }
            return matches!(state, 'T' | 't');
        }
        false
    }
}

/// The command name (field 2, without its parentheses) and the state letter (field 3)
/// of a `stat` line.
fn name_and_state(stat: &str) -> Option<(&str, char)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let state = stat.get(close + 2..)?.chars().next()?;
    Some((name, state))
}

/// The run-queue wait in nanoseconds from a `schedstat` line
/// (`<on-cpu ns> <run_delay ns> <timeslices>`).
fn run_delay_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time and RSS summed over `members`, from one `stat` file each (the cheapest file
/// that has both); `None` if any is gone (the tree changed).
fn sum_members(members: &[u32]) -> Option<shoal_dispatch::Resources> {
    let mut cpu_ms = 0;
    let mut rss_kib = 0;
    for member in members {
        let stat = std::fs::read_to_string(format!("/proc/{member}/stat")).ok()?;
        cpu_ms += cpu_ms_from_stat(&stat).unwrap_or(0);
        rss_kib += rss_pages_from_stat(&stat).unwrap_or(0) * page_kib();
    }
    Some(shoal_dispatch::Resources {
        cpu_time: std::time::Duration::from_millis(cpu_ms),
        rss_kib,
    })
}

/// RSS, CPU time and (with `pss`, by the costlier smaps walk; else it stays 0) PSS,
/// summed over the tree at `pid`; `None` if `pid` itself is gone.
fn sum_tree(pid: u32, pss: bool) -> Option<ProcSample> {
    let mut total = ProcSample::default();
    let mut seen = false;
    for member in tree(pid) {
        let (Ok(status), Ok(stat)) = (
            std::fs::read_to_string(format!("/proc/{member}/status")),
            std::fs::read_to_string(format!("/proc/{member}/stat")),
        ) else {
            continue;
        };
        seen |= member == pid;
        let rss_kib = kib_field(&status, "VmRSS:").unwrap_or(0);
        total.rss_kib += rss_kib;
        total.cpu_ms += cpu_ms_from_stat(&stat).unwrap_or(0);
        if pss {
            total.pss_kib += std::fs::read_to_string(format!("/proc/{member}/smaps_rollup"))
                .ok()
                .and_then(|s| kib_field(&s, "Pss:"))
                .unwrap_or(rss_kib);
        }
    }
    seen.then_some(total)
}

/// `pid` and its descendants, through each thread's `children` list.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut next = 0;
    // Bounded: an instance may hold at most its pids limit of processes anyway.
    while next < out.len() && out.len() < 4096 {
        let parent = out[next];
        next += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{parent}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// The uid owning the TCP socket that connected from `peer` to our listener on
/// `local_port` (both on loopback), from /proc/net/tcp; `None` if it is not there.
pub fn tcp_peer_uid(peer: std::net::SocketAddr, local_port: u16) -> Option<u32> {
    let std::net::SocketAddr::V4(peer) = peer else {
        return None;
    };
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    find_socket_uid(&table, peer, local_port)
}

fn find_socket_uid(table: &str, peer: std::net::SocketAddrV4, local_port: u16) -> Option<u32> {
    // The kernel prints an address as the in-memory (network order) u32 in hex, which on
    // a little-endian machine reads as the octets reversed.
    let hex_ip = |ip: std::net::Ipv4Addr| format!("{:08X}", u32::from_ne_bytes(ip.octets()));
    let want_local = format!("{}:{:04X}", hex_ip(*peer.ip()), peer.port());
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
        let remote_port = remote.rsplit(':').next()?;
        (local.eq_ignore_ascii_case(&want_local)
            && u16::from_str_radix(remote_port, 16).ok()? == local_port)
            .then(|| uid.parse().ok())
            .flatten()
    })
}

fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The resident set in pages (field 24 of `stat`).
fn rss_pages_from_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(21)?.parse().ok()
}

/// The size of a memory page, KiB.
fn page_kib() -> u64 {
    static PAGE_KIB: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE_KIB.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the system; it takes no pointers.
        #[allow(unsafe_code)]
        let bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(bytes).ok().filter(|b| *b > 0).unwrap_or(4096) / 1024
    })
}

/// utime + stime (fields 14 and 15) in clock ticks, converted at the Linux USER_HZ of 100.
fn cpu_ms_from_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // Children already waited for (fields 16 and 17): their time moves here when reaped.
    let cutime: u64 = fields.get(13).and_then(|f| f.parse().ok()).unwrap_or(0);
    let cstime: u64 = fields.get(14).and_then(|f| f.parse().ok()).unwrap_or(0);
    Some((utime + stime + cutime + cstime) * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_state_of_a_process_and_sees_a_stopped_one() {
        assert_eq!(name_and_state("12 (node) S 1 2 3"), Some(("node", 'S')));
        assert_eq!(name_and_state("12 (a) (b)) T 1 2 3"), Some(("a) (b)", 'T')));
        // A real stopped child.
        #[allow(clippy::disallowed_methods)]
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let reader = TreeReader::new(child.id());
        assert!(!reader.frozen());
        // SAFETY: kill(2) with plain integers.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(child.id() as i32, libc::SIGSTOP);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !reader.frozen() {
            assert!(std::time::Instant::now() < deadline, "never seen stopped");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn reads_the_run_delay_from_schedstat() {
        assert_eq!(run_delay_ns("123456 7890 12\n"), Some(7890));
        assert_eq!(run_delay_ns("123456"), None);
        let own = TreeReader::new(std::process::id());
        assert!(own.run_wait().is_some(), "this kernel keeps schedstats");
    }

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "42 (node my app) S 1 42 42 0 -1 4194304 100 0 0 0 250 30 7 3 20 0 11 0 1 1 1";
        assert_eq!(cpu_ms_from_stat(stat), Some(2900));
        let with_rss = "42 (node) S 1 42 42 0 -1 4194304 100 0 0 0 250 30 7 3 20 0 11 0 1 9 3210 18446744073709551615";
        assert_eq!(rss_pages_from_stat(with_rss), Some(3210));
    }

    #[test]
    fn finds_the_uid_of_a_loopback_peer() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:A3B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 200001        0 1234 1
   1: 0100007F:1F90 0100007F:A3B2 01 00000000:00000000 00:00000000 00000000     0        0 1235 1
";
        let peer: std::net::SocketAddrV4 = "127.0.0.1:41906".parse().unwrap();
        assert_eq!(find_socket_uid(table, peer, 0x1F90), Some(200_001));
        assert_eq!(find_socket_uid(table, peer, 0x1F91), None);
    }

    #[test]
    fn a_live_connection_is_attributed_to_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        // SAFETY-free: geteuid through libc is a plain read.
        #[allow(unsafe_code)]
        let me = unsafe { libc::geteuid() };
        assert_eq!(tcp_peer_uid(peer, port), Some(me));
    }

    #[test]
    fn a_remembered_tree_reads_as_a_fresh_walk() {
        let reader = TreeReader::new(std::process::id());
        let first = reader.resources().expect("this process");
        let again = reader
            .resources()
            .expect("this process, from the remembered tree");
        assert!(again.cpu_time >= first.cpu_time);
        assert!(again.rss_kib > 0);
        assert!(TreeReader::new(u32::MAX).resources().is_none());
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0 && s.pss_kib > 0, "{s:?}");
    }
}
