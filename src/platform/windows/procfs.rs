//! Other processes, by pid, as the pool asks about them on every platform (the Windows
//! side of `procfs.rs`): whether one runs, its resident memory, its descendants. Pids
//! cross the boundary as i32, as on POSIX; Windows process ids fit.

use crate::platform::processes;

/// Whether process `pid` exists and has not exited.
pub fn is_running(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(processes::is_running)
}

/// The resident memory (working set) of process `pid`, in bytes.
pub fn resident_bytes(pid: i32) -> Option<u64> {
    processes::resident_bytes(u32::try_from(pid).ok()?)
}

/// Every live descendant of process `pid`, children before grandchildren.
pub fn descendants(pid: i32) -> Vec<i32> {
    let Ok(root) = u32::try_from(pid) else {
        return Vec::new();
    };
    processes::descendants(root)
        .into_iter()
        .filter_map(|p| i32::try_from(p).ok())
        .collect()
}
