//! For the tests of this folder: child processes that are this test executable run
//! again with a role (the `helper` test, ignored in normal runs), and a few handles.

use std::io;
use std::os::windows::io::{
    AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle, RawHandle,
};
use std::ptr::null;
use std::time::Duration;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::Threading::{
    CreateEventW, OpenProcess, SetEvent, WaitForSingleObject, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_SYNCHRONIZE,
};

use super::owned;
use super::process::Command;

/// How long a helper that waits to be ended lives at most.
const HELPER_LIFE: Duration = Duration::from_secs(60);

/// A command that runs this executable's `helper` in the role `role`.
pub fn child(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    for arg in [
        "--exact",
        "platform::test_child::helper",
        "--ignored",
        "--quiet",
        "--test-threads=1",
        "--nocapture",
    ] {
        cmd.arg(arg);
    }
    cmd.env("LOKY_TEST_ROLE", role);
    cmd
}

/// Start `role`, which says it is ready by setting an event; return once it did.
pub fn started(role: &str) -> super::process::Child {
    let ready = Event::new().unwrap();
    let mut cmd = child(role);
    let value = cmd.inherit(ready.as_handle()).unwrap();
    cmd.env("LOKY_TEST_EVENTS", value.to_string());
    let started = cmd.spawn().unwrap();
    assert!(wait_for_event(&ready, 30_000), "{role} is ready");
    started
}

/// Start `role` with the client end of a new channel: (the server end, the child).
pub fn with_channel(role: &str) -> (super::pipe::PipeEnd, super::process::Child) {
    let (server, client) = super::pipe::pair().unwrap();
    let mut cmd = child(role);
    let value = cmd.inherit(client.as_handle()).unwrap();
    cmd.env("LOKY_TEST_PIPE", value.to_string());
    (server, cmd.spawn().unwrap()) // the child holds the only client end now
}

/// How many arguments `child` puts before the ones a test adds.
const OWN_ARGS: usize = 7;

/// A manual-reset event, unset, not inheritable.
pub struct Event(OwnedHandle);

impl Event {
    pub fn new() -> io::Result<Event> {
        // SAFETY: an unnamed event with default security; the result is checked.
        Ok(Event(owned(unsafe { CreateEventW(null(), 1, 0, null()) })?))
    }

    pub fn as_handle(&self) -> BorrowedHandle<'_> {
        self.0.as_handle()
    }

    pub fn is_set(&self) -> bool {
        wait_for_event(self, 0)
    }
}

pub fn wait_for_event(event: &Event, timeout_ms: u32) -> bool {
    // SAFETY: waits on our live event.
    unsafe { WaitForSingleObject(event.0.as_raw_handle() as HANDLE, timeout_ms) == 0 }
}

pub fn set(event: &Event) {
    set_all(&[event.0.as_raw_handle() as HANDLE]);
}

/// A handle to process `pid`, to wait for its exit and read its exit code.
pub fn open_process(pid: u32) -> OwnedHandle {
    // SAFETY: opens a process by id; the result is checked.
    owned(unsafe {
        OpenProcess(
            PROCESS_SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION,
            0,
            pid,
        )
    })
    .unwrap()
}

/// The handle values listed in LOKY_TEST_EVENTS.
fn handles_from_env() -> Vec<HANDLE> {
    std::env::var("LOKY_TEST_EVENTS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|v| v.parse::<usize>().ok())
        .map(|v| v as HANDLE)
        .collect()
}

fn set_all(handles: &[HANDLE]) {
    for &handle in handles {
        // SAFETY: a handle value given by the parent; a wrong one only fails.
        unsafe { SetEvent(handle) };
    }
}

/// A child process's roles; never a test of its own (ignored, and a no-op without a role).
#[test]
#[ignore = "not a test: the body of the child processes that the tests start"]
fn helper() {
    let Ok(role) = std::env::var("LOKY_TEST_ROLE") else {
        return;
    };
    let code = match role.as_str() {
        "exit" => std::env::var("LOKY_TEST_CODE").unwrap().parse().unwrap(),
        "echo_args" => {
            let expected = std::env::var("LOKY_TEST_EXPECT").unwrap();
            let expected: Vec<&str> = expected.split('\u{1f}').collect();
            let got: Vec<String> = std::env::args().skip(OWN_ARGS).collect();
            let case_kept = std::env::var("LOKY_TEST_MIXED_CASE").as_deref() == Ok("kept");
            i32::from(got != expected || !case_kept)
        }
        "set_events" => {
            set_all(&handles_from_env());
            0
        }
        "sleep" => {
            std::thread::sleep(HELPER_LIFE);
            0
        }
        "grandparent" => {
            let mut grandchild = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "platform::test_child::helper", "--ignored"])
                .env("LOKY_TEST_ROLE", "sleep")
                .spawn()
                .unwrap();
            set_all(&handles_from_env());
            std::thread::sleep(HELPER_LIFE);
            let _ = grandchild.kill();
            let _ = grandchild.wait();
            0
        }
        "holder" => {
            let _worker = child("sleep").spawn().unwrap();
            set_all(&handles_from_env());
            std::thread::sleep(HELPER_LIFE);
            0
        }
        "pipe_echo" => {
            let value = std::env::var("LOKY_TEST_PIPE").unwrap().parse().unwrap();
            // SAFETY: the pipe end the parent passed on, owned by nothing else here.
            let end = unsafe { super::pipe::PipeEnd::from_raw(value) }.unwrap();
            let mut buf = vec![0u8; 65536];
            loop {
                let n = end.read(&mut buf).unwrap();
                if n == 0 {
                    break 0;
                }
                buf[..n].iter_mut().for_each(|b| *b += 1);
                end.write_all(&buf[..n]).unwrap();
            }
        }
        "section_peer" => section_peer(),
        "cpu_capped" => cpu_capped(),
        "interrupted" => interrupted(),
        "crash" => {
            // SAFETY: none: an access violation on purpose (address 8 is never mapped).
            let byte = unsafe { std::ptr::read_volatile(8 as *const u8) };
            i32::from(byte)
        }
        other => panic!("unknown role {other}"),
    };
    std::process::exit(code);
}

/// Take ownership of a handle value received from a parent.
///
/// SAFETY (for callers): `value` must be a handle of this process that nothing else owns.
pub unsafe fn take(value: usize) -> OwnedHandle {
    // SAFETY: see the function's contract.
    unsafe { OwnedHandle::from_raw_handle(value as RawHandle) }
}

/// Maps the section whose handle value comes on the pipe, checks it, writes "reply",
/// then hands over a section of its own ("mine") and waits for the parent's close.
fn section_peer() -> i32 {
    use super::section::{Section, View};
    let value = std::env::var("LOKY_TEST_PIPE").unwrap().parse().unwrap();
    // SAFETY: the pipe end the parent passed on, owned by nothing else here.
    let end = unsafe { super::pipe::PipeEnd::from_raw(value) }.unwrap();
    let mut raw = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        got += end.read(&mut raw[got..]).unwrap();
    }
    // SAFETY: the parent duplicated this handle into us for us to own.
    let handle = unsafe { take(u64::from_le_bytes(raw) as usize) };
    let view = View::of(std::os::windows::io::AsHandle::as_handle(&handle), false).unwrap();
    drop(handle);
    // SAFETY: the parent does not touch the view until it hears back.
    let bytes = unsafe { view.bytes_mut() };
    if bytes.len() != 16 * 4096 || bytes.iter().enumerate().any(|(i, &b)| b != (i % 253) as u8) {
        return 2;
    }
    bytes[..5].copy_from_slice(b"reply");
    let mine = Section::new(4096).unwrap();
    // SAFETY: our own fresh view.
    unsafe { mine.map().unwrap().bytes_mut()[..4].copy_from_slice(b"mine") };
    end.write_all(&(mine.into_raw() as u64).to_le_bytes())
        .unwrap();
    let mut rest = [0u8; 1];
    while end.read(&mut rest).unwrap() != 0 {}
    0
}

/// Puts this process in a job capped at a quarter of the machine: its cpu_count then;
/// 255 if the cap could not be set, 254 if the process could not join the job.
fn cpu_capped() -> i32 {
    use windows_sys::Win32::System::JobObjects::{
        JobObjectCpuRateControlInformation, SetInformationJobObject,
        JOBOBJECT_CPU_RATE_CONTROL_INFORMATION, JOB_OBJECT_CPU_RATE_CONTROL_ENABLE,
        JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP,
    };
    use windows_sys::Win32::System::Threading::GetCurrentProcess;
    let job = super::job::Job::new().unwrap();
    // SAFETY: plain data; zeroed, then the fields set.
    let mut info: JOBOBJECT_CPU_RATE_CONTROL_INFORMATION = unsafe { std::mem::zeroed() };
    info.ControlFlags = JOB_OBJECT_CPU_RATE_CONTROL_ENABLE | JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP;
    info.Anonymous.CpuRate = 2_500;
    // SAFETY: a live structure of the size given, for our own job.
    let set = unsafe {
        SetInformationJobObject(
            job.as_handle().as_raw_handle() as HANDLE,
            JobObjectCpuRateControlInformation,
            (&info as *const JOBOBJECT_CPU_RATE_CONTROL_INFORMATION).cast(),
            std::mem::size_of::<JOBOBJECT_CPU_RATE_CONTROL_INFORMATION>() as u32,
        )
    };
    if set == 0 {
        eprintln!("setting the CPU rate: {}", io::Error::last_os_error());
        return 255;
    }
    // SAFETY: the pseudo-handle of this process, valid for its whole life.
    let me = unsafe { BorrowedHandle::borrow_raw(GetCurrentProcess() as RawHandle) };
    if job.assign(me).is_err() {
        return 254;
    }
    let count = super::cpu::cpu_count() as i32;
    std::mem::forget(job); // ends with this process
    count
}

static SIGINTS: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn count_sigint(_: libc::c_int) {
    SIGINTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

/// Listens for interrupts (the first handle of LOKY_TEST_EVENTS) with a SIGINT handler
/// that counts, says so (the second), and exits with the count once there is one (or
/// 0 after a while).
fn interrupted() -> i32 {
    let handles = handles_from_env();
    super::interrupt::on_sigint(count_sigint);
    // SAFETY: the parent passed this event on for us to own.
    let event = unsafe { take(handles[0] as usize) };
    super::interrupt::listen(event, super::interrupt::raise_sigint).unwrap();
    set_all(&handles[1..]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while SIGINTS.load(std::sync::atomic::Ordering::SeqCst) == 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    SIGINTS.load(std::sync::atomic::Ordering::SeqCst)
}
