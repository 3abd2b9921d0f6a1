//! Job objects: a worker and every process it starts end together.
//!
//! Each worker gets a job of its own (`process::Command::spawn` puts it there before it
//! runs), which the parent alone holds:
//! - `Job::terminate` ends the worker and every process it started (a task's timeout,
//!   `terminate_workers`);
//! - the job is kill-on-close: when the parent exits, however it dies, the system closes
//!   its handles and so ends every worker tree (no watchdog thread is needed for that;
//!   POSIX needs one). Jobs nest, so this holds when the parent itself runs in a job;
//! - an unhandled exception (a segfault) ends the process at once instead of opening the
//!   system's error-report dialog, which would keep a crashed worker alive.

use std::io;
use std::mem::size_of;
use std::os::windows::io::{AsRawHandle, BorrowedHandle, OwnedHandle};
use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectBasicProcessIdList,
    JobObjectExtendedLimitInformation, QueryInformationJobObject, SetInformationJobObject,
    TerminateJobObject, JOBOBJECT_BASIC_PROCESS_ID_LIST, JOBOBJECT_EXTENDED_LIMIT_INFORMATION,
    JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
};

use super::{check, owned};

/// A Job object: the processes in it end together.
pub struct Job(OwnedHandle);

impl Job {
    /// A new job whose processes are killed when its last handle closes, and die on an
    /// unhandled exception without a dialog. The handle is not inheritable.
    pub fn new() -> io::Result<Job> {
        // SAFETY: creates an unnamed job with default security; the result is checked.
        let job = Job(owned(unsafe { CreateJobObjectW(null(), null()) })?);
        // SAFETY: plain data; zeroed is its documented "no limits" value.
        let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        limits.BasicLimitInformation.LimitFlags =
            JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION;
        // SAFETY: passes a live structure of the size given, for our own job.
        check(unsafe {
            SetInformationJobObject(
                job.raw(),
                JobObjectExtendedLimitInformation,
                (&limits as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        })?;
        Ok(job)
    }

    fn raw(&self) -> HANDLE {
        self.0.as_raw_handle() as HANDLE
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub fn as_handle(&self) -> BorrowedHandle<'_> {
        std::os::windows::io::AsHandle::as_handle(&self.0)
    }

    pub fn assign(&self, process: BorrowedHandle<'_>) -> io::Result<()> {
        // SAFETY: both handles are live for the call.
        check(unsafe { AssignProcessToJobObject(self.raw(), process.as_raw_handle() as HANDLE) })
    }

    /// End every process of the job now, with `exit_code`.
    pub fn terminate(&self, exit_code: u32) -> io::Result<()> {
        // SAFETY: our live job handle.
        check(unsafe { TerminateJobObject(self.raw(), exit_code) })
    }

    /// The ids of the processes in the job now (the tests look at them).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn process_ids(&self) -> io::Result<Vec<u32>> {
        let mut room = 64usize;
        loop {
            // The structure's list holds one id: a buffer of usize words gives it room
            // for `room` (two u32 counts take the first word).
            let mut buf = vec![0usize; 1 + room];
            // SAFETY: the buffer is as large as the size given, and aligned for the
            // structure (usize words).
            check(unsafe {
                QueryInformationJobObject(
                    self.raw(),
                    JobObjectBasicProcessIdList,
                    buf.as_mut_ptr().cast(),
                    (buf.len() * size_of::<usize>()) as u32,
                    null_mut(),
                )
            })
            .or_else(|err| match err.raw_os_error() {
                Some(234) => Ok(()), // ERROR_MORE_DATA: the counts say how many
                _ => Err(err),
            })?;
            // SAFETY: the buffer starts with the structure the call filled.
            let list = unsafe { &*(buf.as_ptr() as *const JOBOBJECT_BASIC_PROCESS_ID_LIST) };
            let (all, listed) = (
                list.NumberOfAssignedProcesses as usize,
                list.NumberOfProcessIdsInList as usize,
            );
            if listed >= all || all <= room {
                return Ok(buf[1..1 + listed.min(room)]
                    .iter()
                    .map(|&id| id as u32)
                    .collect());
            }
            room = all + 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::process::{exit_code, terminate, Child};
    use super::super::test_child::{open_process, started};
    use super::*;
    use std::os::windows::io::AsHandle;

    /// Start a child that starts a grandchild and sleeps; the grandchild's pid.
    fn tree() -> (Child, OwnedHandle) {
        let child = started("grandparent");
        let pids = child.job.process_ids().unwrap();
        assert_eq!(pids.len(), 2, "{pids:?}");
        let grandchild = *pids.iter().find(|&&p| p != child.pid).unwrap();
        (child, open_process(grandchild))
    }

    #[test]
    fn terminating_the_job_ends_the_child_and_its_children() {
        let (child, grandchild) = tree();
        child.job.terminate(7).unwrap();
        assert_eq!(child.wait(10_000).unwrap(), Some(7));
        assert_eq!(
            exit_code(grandchild.as_raw_handle() as HANDLE, 10_000).unwrap(),
            Some(7)
        );
    }

    #[test]
    fn closing_the_job_ends_the_tree() {
        let (child, grandchild) = tree();
        let Child { process, job, .. } = child;
        drop(job);
        assert!(exit_code(process.as_raw_handle() as HANDLE, 10_000)
            .unwrap()
            .is_some());
        assert!(exit_code(grandchild.as_raw_handle() as HANDLE, 10_000)
            .unwrap()
            .is_some());
    }

    #[test]
    fn the_death_of_the_parent_ends_its_workers() {
        // child ("holder") starts a worker with a job of its own, then is killed: the
        // system closes the holder's job handle, which ends the worker.
        let holder = started("holder");
        let pids = holder.job.process_ids().unwrap();
        let worker = *pids.iter().find(|&&p| p != holder.pid).unwrap();
        let worker = open_process(worker);
        terminate(holder.process.as_handle(), 9).unwrap();
        assert_eq!(holder.wait(10_000).unwrap(), Some(9));
        assert!(
            exit_code(worker.as_raw_handle() as HANDLE, 10_000)
                .unwrap()
                .is_some(),
            "the worker ended with its parent"
        );
    }
}
