//! How many processors this process may use on Windows: the active processors of
//! every processor group, less what the process's affinity leaves out, less what a CPU
//! rate cap on its job allows (the Windows form of a container's CPU quota, which
//! `cpu_count` reads from cgroups on Linux).
//!
//! A job's cap is a share of the whole machine in hundredths of a percent; N
//! processors capped at that share are worth `ceil(N * rate / 10000)` processors. Only
//! the process's own (innermost) job can be asked: a cap set on an outer job of nested
//! jobs is not seen.

use std::mem::size_of;
use std::ptr::null_mut;

use windows_sys::Win32::System::JobObjects::{
    JobObjectCpuRateControlInformation, QueryInformationJobObject,
    JOBOBJECT_CPU_RATE_CONTROL_INFORMATION, JOB_OBJECT_CPU_RATE_CONTROL_ENABLE,
    JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP, JOB_OBJECT_CPU_RATE_CONTROL_MIN_MAX_RATE,
};
use windows_sys::Win32::System::SystemInformation::{
    GetLogicalProcessorInformationEx, RelationProcessorCore,
    SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX,
};
use windows_sys::Win32::System::Threading::{
    GetActiveProcessorCount, GetCurrentProcess, GetProcessAffinityMask, ALL_PROCESSOR_GROUPS,
};

/// A job's CPU rate for the whole machine.
const WHOLE_MACHINE: u64 = 10_000;

/// The processors this process may use (at least 1).
pub fn cpu_count() -> usize {
    // SAFETY: GetActiveProcessorCount has no preconditions.
    let active = unsafe { GetActiveProcessorCount(ALL_PROCESSOR_GROUPS) }.max(1) as usize;
    let allowed = affinity_count().map_or(active, |n| n.min(active));
    match job_cpu_rate() {
        Some(rate) => allowed.min(rate_limited(active, rate)),
        None => allowed,
    }
}

/// The processors of the process's affinity mask; None when it spans several groups
/// (the system then reports no mask) or cannot be read.
fn affinity_count() -> Option<usize> {
    let (mut process, mut system) = (0usize, 0usize);
    // SAFETY: two live usize words for the call to fill, for our own process.
    let ok = unsafe { GetProcessAffinityMask(GetCurrentProcess(), &mut process, &mut system) };
    (ok != 0 && process != 0).then(|| process.count_ones() as usize)
}

/// The CPU rate cap of this process's job, in hundredths of a percent of the machine;
/// None when it is in no job or its job has no cap.
pub fn job_cpu_rate() -> Option<u32> {
    // SAFETY: plain data for the call to fill.
    let mut info: JOBOBJECT_CPU_RATE_CONTROL_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: a null job asks about this process's job; the structure is live and of
    // the size given.
    let ok = unsafe {
        QueryInformationJobObject(
            null_mut(),
            JobObjectCpuRateControlInformation,
            (&mut info as *mut JOBOBJECT_CPU_RATE_CONTROL_INFORMATION).cast(),
            size_of::<JOBOBJECT_CPU_RATE_CONTROL_INFORMATION>() as u32,
            null_mut(),
        )
    };
    if ok == 0 {
        return None;
    }
    cap(&info)
}

/// The cap a job's CPU rate control sets, if it sets one.
fn cap(info: &JOBOBJECT_CPU_RATE_CONTROL_INFORMATION) -> Option<u32> {
    let flags = info.ControlFlags;
    if flags & JOB_OBJECT_CPU_RATE_CONTROL_ENABLE == 0 {
        return None;
    }
    // SAFETY: the flags say which member of the union the system filled.
    let rate = unsafe {
        if flags & JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP != 0 {
            info.Anonymous.CpuRate
        } else if flags & JOB_OBJECT_CPU_RATE_CONTROL_MIN_MAX_RATE != 0 {
            u32::from(info.Anonymous.Anonymous.MaxRate)
        } else {
            return None; // weight-based: a share among jobs, not a cap
        }
    };
    (rate > 0 && u64::from(rate) < WHOLE_MACHINE).then_some(rate)
}

/// What `processors` capped at `rate` (hundredths of a percent of them all) are worth.
fn rate_limited(processors: usize, rate: u32) -> usize {
    let worth = (processors as u64 * u64::from(rate)).div_ceil(WHOLE_MACHINE);
    (worth as usize).clamp(1, processors.max(1))
}

/// Physical cores of the machine (hyper-threads counted once); None if unknown.
pub fn physical_cores() -> Option<usize> {
    let mut len = 0u32;
    // SAFETY: asks for the size needed (fails with ERROR_INSUFFICIENT_BUFFER by
    // design, having set `len`).
    unsafe { GetLogicalProcessorInformationEx(RelationProcessorCore, null_mut(), &mut len) };
    if len == 0 {
        return None;
    }
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: the buffer holds `len` bytes, aligned for the records.
    let ok = unsafe {
        GetLogicalProcessorInformationEx(RelationProcessorCore, buf.as_mut_ptr().cast(), &mut len)
    };
    if ok == 0 {
        return None;
    }
    // Variable-size records, one per core, each saying its size.
    let (mut offset, mut cores) = (0usize, 0usize);
    let base = buf.as_ptr() as *const u8;
    while offset + size_of::<u32>() * 2 <= len as usize {
        // SAFETY: a record starts at `offset`, within the `len` bytes filled.
        let record =
            unsafe { &*(base.add(offset) as *const SYSTEM_LOGICAL_PROCESSOR_INFORMATION_EX) };
        if record.Size == 0 {
            break;
        }
        cores += usize::from(record.Relationship == RelationProcessorCore);
        offset += record.Size as usize;
    }
    (cores > 0).then_some(cores)
}

#[cfg(test)]
mod tests {
    use super::super::test_child::child;
    use super::*;

    #[test]
    fn a_rate_cap_is_worth_its_share_of_the_processors_rounded_up() {
        assert_eq!(rate_limited(8, 5_000), 4);
        assert_eq!(rate_limited(8, 5_001), 5);
        assert_eq!(rate_limited(2, 2_500), 1);
        assert_eq!(rate_limited(64, 100), 1);
        assert_eq!(rate_limited(4, 1), 1, "never below one");
    }

    #[test]
    fn the_count_is_within_the_machine_and_cores_are_not_more_than_processors() {
        // SAFETY: no preconditions.
        let active = unsafe { GetActiveProcessorCount(ALL_PROCESSOR_GROUPS) } as usize;
        let count = cpu_count();
        assert!(count >= 1 && count <= active, "{count} of {active}");
        if let Some(cores) = physical_cores() {
            assert!(
                cores >= 1 && cores <= active,
                "{cores} cores, {active} processors"
            );
        }
    }

    #[test]
    fn a_cap_is_read_from_the_hard_cap_or_the_maximum_rate_and_only_there() {
        use windows_sys::Win32::System::JobObjects::JOB_OBJECT_CPU_RATE_CONTROL_WEIGHT_BASED;
        let info = |flags, word: u32| {
            // SAFETY: plain data; zeroed, then the fields set.
            let mut info: JOBOBJECT_CPU_RATE_CONTROL_INFORMATION = unsafe { std::mem::zeroed() };
            info.ControlFlags = flags;
            info.Anonymous.CpuRate = word;
            info
        };
        let enable = JOB_OBJECT_CPU_RATE_CONTROL_ENABLE;
        let hard = enable | JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP;
        assert_eq!(cap(&info(hard, 2_500)), Some(2_500));
        assert_eq!(
            cap(&info(JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP, 2_500)),
            None,
            "not enabled"
        );
        assert_eq!(
            cap(&info(hard, 10_000)),
            None,
            "the whole machine is no cap"
        );
        let min_max = enable | JOB_OBJECT_CPU_RATE_CONTROL_MIN_MAX_RATE;
        // MinRate is the low half of the word, MaxRate the high half.
        assert_eq!(cap(&info(min_max, (5_000 << 16) | 1_000)), Some(5_000));
        let weight = enable | JOB_OBJECT_CPU_RATE_CONTROL_WEIGHT_BASED;
        assert_eq!(
            cap(&info(weight, 5)),
            None,
            "a weight is a share, not a cap"
        );
    }

    #[test]
    #[ignore = "Wine 10 refuses to set a job's CPU rate (ERROR_INVALID_PARAMETER): run on Windows"]
    fn a_process_in_a_capped_job_counts_its_share() {
        // The child puts itself in a job capped at a quarter of the machine and exits
        // with its cpu_count; 255 if the cap could not be set.
        let child = child("cpu_capped").spawn().unwrap();
        let code = child.wait(30_000).unwrap().unwrap();
        // SAFETY: no preconditions.
        let active = unsafe { GetActiveProcessorCount(ALL_PROCESSOR_GROUPS) } as usize;
        assert_ne!(code, 255, "the job's CPU rate cap could not be set");
        assert_eq!(code as usize, rate_limited(active, 2_500));
    }
}
