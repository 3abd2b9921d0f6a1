//! Process trees: to end a worker together with everything it started. Read from
//! /proc on Linux, from libproc on macOS. The only place that walks the tree (the
//! Python side asks here too).

use std::collections::HashMap;
#[cfg(target_os = "linux")]
use std::fs;

/// The parent pid recorded in /proc/<pid>/stat ("pid (comm) state ppid ...").
#[cfg(target_os = "linux")]
fn parent_of(stat: &str) -> Option<i32> {
    // comm may contain spaces and parentheses: the fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every live process as (pid, parent pid).
#[cfg(target_os = "linux")]
fn all_processes() -> Vec<(i32, i32)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parent_of(&stat)?))
        })
        .collect()
}

/// proc_pidinfo(pid, `flavor`) into a `T` (plain data), if the kernel filled it whole.
#[cfg(target_os = "macos")]
fn pid_info<T>(pid: i32, flavor: libc::c_int) -> Option<T> {
    // SAFETY: T is one of libc's plain-data proc_*info structs; zeroed is valid.
    let mut info: T = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<T>() as libc::c_int;
    // SAFETY: `info` holds `size` bytes for the kernel to fill.
    let got = unsafe { libc::proc_pidinfo(pid, flavor, 0, (&mut info as *mut T).cast(), size) };
    (got == size).then_some(info)
}

/// Every live process as (pid, parent pid).
#[cfg(target_os = "macos")]
fn all_processes() -> Vec<(i32, i32)> {
    let mut pids = vec![0i32; 8192];
    let bytes = (pids.len() * std::mem::size_of::<i32>()) as libc::c_int;
    // SAFETY: the buffer holds `bytes` bytes for the kernel to fill with pids.
    let n = unsafe { libc::proc_listallpids(pids.as_mut_ptr().cast(), bytes) };
    pids.truncate(n.max(0) as usize);
    pids.into_iter()
        .filter_map(|pid| {
            let info: libc::proc_bsdinfo = pid_info(pid, libc::PROC_PIDTBSDINFO)?;
            Some((pid, info.pbi_ppid as i32))
        })
        .collect()
}

/// Whether process `pid` still runs (a zombie does not).
#[cfg(target_os = "linux")]
pub fn is_running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Whether process `pid` still runs (a zombie does not).
#[cfg(target_os = "macos")]
pub fn is_running(pid: i32) -> bool {
    pid_info::<libc::proc_bsdinfo>(pid, libc::PROC_PIDTBSDINFO)
        .is_some_and(|info| info.pbi_status != libc::SZOMB)
}

/// Every live descendant of `root`, children before grandchildren.
pub fn descendants(root: i32) -> Vec<i32> {
    descendants_of(&[root])
}

/// Every live descendant of each of `roots` (one look at the process table for all).
fn descendants_of(roots: &[i32]) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, ppid) in all_processes() {
        children.entry(ppid).or_default().push(pid);
    }
    let mut found = Vec::new();
    let mut frontier = roots.to_vec();
    while let Some(pid) = frontier.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            frontier.push(child);
        }
    }
    found
}

/// The resident memory of process `pid`, in bytes (from /proc/<pid>/statm).
#[cfg(target_os = "linux")]
pub fn resident_bytes(pid: i32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf with a valid name has no side effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

/// The resident memory of process `pid`, in bytes.
#[cfg(target_os = "macos")]
pub fn resident_bytes(pid: i32) -> Option<u64> {
    pid_info::<libc::proc_taskinfo>(pid, libc::PROC_PIDTASKINFO).map(|info| info.pti_resident_size)
}

/// Send `signal` to the process group of `pid` (its own: workers lead one), to `pid`,
/// and to every descendant that left the group. Descendants are listed before anything
/// is signalled, so that a tree ending itself (`pid` is this process) still reaches them.
pub fn kill_tree(pid: i32, signal: libc::c_int) {
    kill_trees(&[pid], signal);
}

/// `kill_tree` for each of `roots`, with one look at the process table for all.
pub fn kill_trees(roots: &[i32], signal: libc::c_int) {
    let found = descendants_of(roots);
    // SAFETY: plain kill syscalls on pids of our own trees.
    unsafe {
        for &child in &found {
            libc::kill(child, signal);
        }
        for &pid in roots {
            libc::killpg(pid, signal);
            libc::kill(pid, signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn parses_parent_with_odd_command_names() {
        assert_eq!(parent_of("12 (a) b (c)) S 7 12 12 0"), Some(7));
        assert_eq!(parent_of("1 (init) S 0 1 1"), Some(0));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn reads_resident_memory() {
        let rss = resident_bytes(std::process::id() as i32).unwrap();
        assert!(rss > 1 << 20, "{rss}");
        assert_eq!(resident_bytes(-1), None);
    }

    #[test]
    fn a_zombie_does_not_run() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Unreaped once it exits: a zombie.
        assert!(crate::platform::wait_for_exit(
            pid,
            &crate::platform::ExitWatch::Poll,
            false,
            Some(std::time::Duration::from_secs(10))
        ));
        assert!(!is_running(pid));
        assert!(is_running(std::process::id() as i32));
        drop(child);
    }

    #[test]
    fn finds_own_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let found = descendants(std::process::id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found.contains(&(child.id() as i32)));
    }
}
