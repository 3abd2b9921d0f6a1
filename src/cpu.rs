//! How many CPUs this process may use: the machine, its affinity mask, its own cgroup's
//! CPU quota, and physical cores from the kernel's topology files.
//!
//! File lookups take a root directory so tests can point them at a fake tree.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

fn read(root: &Path, path: &str) -> Option<String> {
    fs::read_to_string(root.join(path.trim_start_matches('/'))).ok()
}

/// CPUs the scheduler lets this process run on (Linux: its affinity mask).
#[cfg(not(target_os = "linux"))]
pub fn affinity_count() -> Option<usize> {
    None
}

/// CPUs the scheduler lets this process run on (Linux: its affinity mask).
#[cfg(target_os = "linux")]
pub fn affinity_count() -> Option<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for pid 0 (us).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some(libc::CPU_COUNT(&set) as usize)
    }
}

pub fn online_count() -> usize {
    // SAFETY: sysconf with a valid name has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n < 1 {
        1
    } else {
        n as usize
    }
}

/// Quota divided by period, rounded up; None when unlimited or unparsable.
fn quota_cpus(quota: &str, period: &str) -> Option<usize> {
    let quota: f64 = quota.trim().parse().ok()?;
    let period: f64 = period.trim().parse().ok()?;
    if quota <= 0.0 || period <= 0.0 {
        return None;
    }
    Some(((quota / period).ceil() as usize).max(1))
}

/// The CPU quota of this process's own cgroup (and of its ancestors, the tightest),
/// from /proc/self/cgroup and the cgroup v2 or v1 files under /sys/fs/cgroup.
pub fn cgroup_cpu_limit(root: &Path) -> Option<usize> {
    let membership = read(root, "/proc/self/cgroup")?;
    let mut best: Option<usize> = None;
    let mut consider = |limit: Option<usize>| {
        if let Some(l) = limit {
            best = Some(best.map_or(l, |b| b.min(l)));
        }
    };
    for line in membership.lines() {
        // "hierarchy-id:controllers:path"
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            _ => continue,
        };
        let v2 = controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "cpu") {
            continue;
        }
        // Walk from the process's own cgroup up to the hierarchy root.
        let mut dir = PathBuf::from(path.trim_start_matches('/'));
        loop {
            if v2 {
                let file = Path::new("sys/fs/cgroup").join(&dir).join("cpu.max");
                if let Some(text) = read(root, &file.to_string_lossy()) {
                    let mut fields = text.split_whitespace();
                    if let (Some(q), Some(p)) = (fields.next(), fields.next()) {
                        consider(quota_cpus(q, p));
                    }
                }
            } else {
                for mount in ["sys/fs/cgroup/cpu,cpuacct", "sys/fs/cgroup/cpu"] {
                    let base = Path::new(mount).join(&dir);
                    let quota = read(root, &base.join("cpu.cfs_quota_us").to_string_lossy());
                    let period = read(root, &base.join("cpu.cfs_period_us").to_string_lossy());
                    if let (Some(q), Some(p)) = (quota, period) {
                        consider(quota_cpus(&q, &p));
                        break;
                    }
                }
            }
            if !dir.pop() {
                break;
            }
        }
    }
    best
}

/// Parse a kernel CPU list such as "0-3,8,10-11".
fn parse_cpu_list(text: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

/// Distinct (package, core) pairs among the online CPUs; None without topology files.
pub fn physical_cores(root: &Path) -> Option<usize> {
    let online = parse_cpu_list(&read(root, "/sys/devices/system/cpu/online")?);
    let mut cores = HashSet::new();
    for cpu in online {
        let dir = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let package = read(root, &format!("{dir}/physical_package_id"))?;
        let core = read(root, &format!("{dir}/core_id"))?;
        cores.insert((package.trim().to_string(), core.trim().to_string()));
    }
    (!cores.is_empty()).then_some(cores.len())
}

/// The number of CPUs to use: never below 1.
pub fn cpu_count(root: &Path, only_physical: bool, env_limit: Option<usize>) -> usize {
    let mut count = online_count();
    for limit in [affinity_count(), cgroup_cpu_limit(root), env_limit]
        .into_iter()
        .flatten()
    {
        count = count.min(limit);
    }
    if only_physical {
        if let Some(physical) = physical_cores(root) {
            count = count.min(physical);
        }
    }
    count.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(files: &[(&str, &str)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "loky-cpu-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&root);
        for (path, text) in files {
            let file = root.join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, text).unwrap();
        }
        root
    }

    #[test]
    fn v2_quota_of_own_cgroup_rounds_up() {
        let root = fake_root(&[
            ("proc/self/cgroup", "0::/user.slice/job\n"),
            ("sys/fs/cgroup/cpu.max", "max 100000\n"),
            ("sys/fs/cgroup/user.slice/job/cpu.max", "150000 100000\n"),
        ]);
        assert_eq!(cgroup_cpu_limit(&root), Some(2));
    }

    #[test]
    fn v1_quota_and_unlimited() {
        let root = fake_root(&[
            (
                "proc/self/cgroup",
                "4:cpu,cpuacct:/docker/abc\n3:memory:/x\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
                "-1\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        assert_eq!(cgroup_cpu_limit(&root), None);
        let root = fake_root(&[
            ("proc/self/cgroup", "4:cpu,cpuacct:/docker/abc\n"),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
                "50000\n",
            ),
            (
                "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                "100000\n",
            ),
        ]);
        assert_eq!(cgroup_cpu_limit(&root), Some(1));
    }

    #[test]
    fn physical_cores_count_hyperthreads_once() {
        let root = fake_root(&[
            ("sys/devices/system/cpu/online", "0-3\n"),
            (
                "sys/devices/system/cpu/cpu0/topology/physical_package_id",
                "0",
            ),
            ("sys/devices/system/cpu/cpu0/topology/core_id", "0"),
            (
                "sys/devices/system/cpu/cpu1/topology/physical_package_id",
                "0",
            ),
            ("sys/devices/system/cpu/cpu1/topology/core_id", "1"),
            (
                "sys/devices/system/cpu/cpu2/topology/physical_package_id",
                "0",
            ),
            ("sys/devices/system/cpu/cpu2/topology/core_id", "0"),
            (
                "sys/devices/system/cpu/cpu3/topology/physical_package_id",
                "0",
            ),
            ("sys/devices/system/cpu/cpu3/topology/core_id", "1"),
        ]);
        assert_eq!(physical_cores(&root), Some(2));
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-2,5,7-8\n"), vec![0, 1, 2, 5, 7, 8]);
    }

    #[test]
    fn env_limit_and_floor() {
        let root = fake_root(&[]);
        assert_eq!(cpu_count(&root, false, Some(1)), 1);
        assert_eq!(cpu_count(&root, false, Some(0)), 1);
    }
}
