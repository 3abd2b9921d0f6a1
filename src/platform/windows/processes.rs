//! Other processes on Windows, by id: whether one runs, its resident memory, and its
//! descendants (the counterpart of `procfs.rs`).
//!
//! The system's process list gives each process's parent id, but an id is reused once
//! its process is gone, and an orphan keeps its dead parent's id: a process is taken for
//! a child only if it started after its parent did. (Ending a worker's tree goes
//! through its Job object instead, which holds exactly its processes.)

use std::collections::HashMap;
use std::mem::size_of;
use std::os::windows::io::{AsRawHandle, OwnedHandle};

use windows_sys::Win32::Foundation::{FILETIME, HANDLE, WAIT_TIMEOUT};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, Process32FirstW, Process32NextW, PROCESSENTRY32W, TH32CS_SNAPPROCESS,
};
use windows_sys::Win32::System::ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
use windows_sys::Win32::System::Threading::{
    GetProcessTimes, OpenProcess, WaitForSingleObject, PROCESS_ACCESS_RIGHTS,
    PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE, PROCESS_VM_READ,
};

use super::owned;

fn open(pid: u32, access: PROCESS_ACCESS_RIGHTS) -> Option<OwnedHandle> {
    // SAFETY: opens a process by id; the result is checked.
    owned(unsafe { OpenProcess(access, 0, pid) }).ok()
}

/// Whether process `pid` exists and has not exited.
pub fn is_running(pid: u32) -> bool {
    open(pid, PROCESS_SYNCHRONIZE).is_some_and(|process| {
        // SAFETY: waits, without blocking, on a live process handle.
        unsafe { WaitForSingleObject(process.as_raw_handle() as HANDLE, 0) == WAIT_TIMEOUT }
    })
}

/// Process `pid`'s working set (what psutil calls its rss), in bytes.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let process = open(pid, PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_VM_READ)?;
    // SAFETY: plain data for the call to fill.
    let mut counters: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
    let size = size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
    counters.cb = size;
    // SAFETY: a live process handle and a live structure of the size given.
    let ok =
        unsafe { K32GetProcessMemoryInfo(process.as_raw_handle() as HANDLE, &mut counters, size) };
    (ok != 0).then_some(counters.WorkingSetSize as u64)
}

/// When process `pid` started (100 ns units), if it can be asked.
fn start_time(pid: u32) -> Option<u64> {
    let process = open(pid, PROCESS_QUERY_LIMITED_INFORMATION)?;
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: a live process handle and four live FILETIMEs to fill.
    let ok = unsafe {
        GetProcessTimes(
            process.as_raw_handle() as HANDLE,
            &mut created,
            &mut exited,
            &mut kernel,
            &mut user,
        )
    };
    (ok != 0).then(|| (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
}

/// Every live process as (pid, parent pid).
fn all_processes() -> Vec<(u32, u32)> {
    // SAFETY: a snapshot of the process list; the result is checked.
    let Ok(snapshot) = owned(unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) }) else {
        return Vec::new();
    };
    let snapshot = snapshot.as_raw_handle() as HANDLE;
    // SAFETY: plain data; zeroed, then its size set as the calls require.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = size_of::<PROCESSENTRY32W>() as u32;
    let mut found = Vec::new();
    // SAFETY: a live snapshot and a live entry of the size it says.
    let mut more = unsafe { Process32FirstW(snapshot, &mut entry) } != 0;
    while more {
        found.push((entry.th32ProcessID, entry.th32ParentProcessID));
        // SAFETY: as above.
        more = unsafe { Process32NextW(snapshot, &mut entry) } != 0;
    }
    found
}

/// Every live descendant of process `root`, children before grandchildren.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, parent) in all_processes() {
        if pid != parent && pid != 0 {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut level = vec![(root, start_time(root))];
    while !level.is_empty() {
        let mut next = Vec::new();
        for (parent, parent_start) in level {
            for &child in children.get(&parent).into_iter().flatten() {
                let child_start = start_time(child);
                // A process that started before its "parent" has a reused parent id.
                let after = match (parent_start, child_start) {
                    (Some(p), Some(c)) => c >= p,
                    _ => true,
                };
                if after && !found.contains(&child) && child != root {
                    found.push(child);
                    next.push((child, child_start));
                }
            }
        }
        level = next;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::test_child::started;
    use super::*;

    #[test]
    fn a_child_and_its_child_are_found_in_order_and_end_as_not_running() {
        let proc = started("grandparent");
        let tree = descendants(std::process::id());
        let mine = tree.iter().position(|&p| p == proc.pid).expect("the child");
        let below = descendants(proc.pid);
        assert_eq!(below.len(), 1, "{below:?}");
        let grandchild = below[0];
        let theirs = tree
            .iter()
            .position(|&p| p == grandchild)
            .expect("the grandchild");
        assert!(mine < theirs, "children before grandchildren: {tree:?}");
        assert!(is_running(grandchild));
        proc.job.terminate(1).unwrap();
        assert_eq!(proc.wait(10_000).unwrap(), Some(1));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while is_running(grandchild) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!is_running(grandchild));
    }

    #[test]
    fn resident_memory_grows_with_touched_pages() {
        let me = std::process::id();
        let before = resident_bytes(me).unwrap();
        assert!(before > 1 << 20, "{before}");
        let mut block = vec![0u8; 128 << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        let after = resident_bytes(me).unwrap();
        assert!(after >= before + (64 << 20), "{before} -> {after}");
        drop(block);
        assert_eq!(resident_bytes(u32::MAX - 3), None, "no such process");
    }
}
