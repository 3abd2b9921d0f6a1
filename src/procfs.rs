//! Process trees, read from /proc: to end a worker together with everything it started.
//! The only place that walks the tree (the Python side asks here too).

use std::collections::HashMap;
use std::fs;

/// The parent pid recorded in /proc/<pid>/stat ("pid (comm) state ppid ...").
fn parent_of(stat: &str) -> Option<i32> {
    // comm may contain spaces and parentheses: the fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every live descendant of `root`, children before grandchildren.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            frontier.push(child);
        }
    }
    found
}

/// The resident memory of process `pid`, in bytes (from /proc/<pid>/statm).
pub fn resident_bytes(pid: i32) -> Option<u64> {
    let statm = fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf with a valid name has no side effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

/// Send `signal` to the process group of `pid` (its own: workers lead one), to `pid`,
/// and to every descendant that left the group. Descendants are listed before anything
/// is signalled, so that a tree ending itself (`pid` is this process) still reaches them.
pub fn kill_tree(pid: i32, signal: libc::c_int) {
    let found = descendants(pid);
    // SAFETY: plain kill syscalls on pids of our own tree.
    unsafe {
        for &child in &found {
            libc::kill(child, signal);
        }
        libc::killpg(pid, signal);
        libc::kill(pid, signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
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
