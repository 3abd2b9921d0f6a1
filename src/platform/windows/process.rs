//! Starting a process on Windows.
//!
//! ```text
//!  Command::inherit(channel) ── an inheritable duplicate; its value is what the child sees
//!  Command::spawn
//!    CreateProcessW(suspended, handle list = the duplicates + stdio only)
//!    AssignProcessToJobObject(a new job: kill on close, die on unhandled exception)
//!    ResumeThread                       the child runs only once it is in its job
//!    the duplicates are closed          the parent keeps no inheritable handle
//! ```
//!
//! Only the handles named are inherited: CreateProcessW is told the exact list
//! (PROC_THREAD_ATTRIBUTE_HANDLE_LIST), so no other inheritable handle of this process
//! (a pipe of another library, another worker's channel being set up) reaches the child.
//! The duplicates exist only for the time of one start.
//! Each child gets a Job object of its own (`job`), which the parent alone holds.

use std::ffi::{OsStr, OsString};
use std::io;
use std::mem::size_of;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{
    AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle, RawHandle,
};
use std::ptr::{null, null_mut};

use windows_sys::Win32::Foundation::{
    DuplicateHandle, DUPLICATE_SAME_ACCESS, GENERIC_READ, HANDLE,
};
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_ATTRIBUTE_NORMAL, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::Console::{GetStdHandle, STD_ERROR_HANDLE, STD_OUTPUT_HANDLE};
use windows_sys::Win32::System::Threading::{
    CreateProcessW, DeleteProcThreadAttributeList, GetCurrentProcess, GetExitCodeProcess,
    InitializeProcThreadAttributeList, ResumeThread, TerminateProcess, UpdateProcThreadAttribute,
    WaitForSingleObject, CREATE_NEW_PROCESS_GROUP, CREATE_SUSPENDED, CREATE_UNICODE_ENVIRONMENT,
    EXTENDED_STARTUPINFO_PRESENT, LPPROC_THREAD_ATTRIBUTE_LIST, PROCESS_INFORMATION,
    PROC_THREAD_ATTRIBUTE_HANDLE_LIST, STARTF_USESTDHANDLES, STARTUPINFOEXW,
};

use super::job::Job;
use super::{check, owned, wide};

/// The exit code GetExitCodeProcess reports while a process runs.
const STILL_ACTIVE: u32 = 259;

/// A started child: its id, a handle to it (with every access right), and its job.
pub struct Child {
    pub pid: u32,
    pub process: OwnedHandle,
    pub job: Job,
}

impl Child {
    /// The exit code once it has exited; None while it runs.
    pub fn try_wait(&self) -> io::Result<Option<u32>> {
        exit_code(self.process.as_raw_handle() as HANDLE, 0)
    }

    /// Wait at most `timeout_ms` for the exit; its exit code, or None on timeout.
    pub fn wait(&self, timeout_ms: u32) -> io::Result<Option<u32>> {
        exit_code(self.process.as_raw_handle() as HANDLE, timeout_ms)
    }
}

/// Wait up to `timeout_ms` for `process` to exit; its exit code, None if it still runs.
pub fn exit_code(process: HANDLE, timeout_ms: u32) -> io::Result<Option<u32>> {
    // SAFETY: waits on a handle the caller keeps open.
    if unsafe { WaitForSingleObject(process, timeout_ms) } != 0 {
        return Ok(None); // WAIT_TIMEOUT (or a failed wait, which the next call reports)
    }
    let mut code = STILL_ACTIVE;
    // SAFETY: `code` is a live u32 for the call to fill.
    check(unsafe { GetExitCodeProcess(process, &mut code) })?;
    Ok(Some(code))
}

/// End `process` (not its children) with `exit_code`.
pub fn terminate(process: BorrowedHandle<'_>, exit_code: u32) -> io::Result<()> {
    // SAFETY: a live process handle; ending an exited process only reports an error.
    check(unsafe { TerminateProcess(process.as_raw_handle() as HANDLE, exit_code) })
}

/// How to start a process.
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Inheritable duplicates of the handles the child inherits (closed when dropped).
    inherited: Vec<OwnedHandle>,
    /// Inheritable handles of the caller's the child inherits as they are (`pass`).
    passed: Vec<HANDLE>,
    /// Start it in a process group of its own (see `new_process_group`).
    own_group: bool,
}

impl Command {
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            inherited: Vec::new(),
            passed: Vec::new(),
            own_group: false,
        }
    }

    /// Start the child in a process group of its own: the console's Ctrl-C does not
    /// reach it (the parent passes interrupts on its own way, see `interrupt`).
    pub fn new_process_group(&mut self) -> &mut Command {
        self.own_group = true;
        self
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Command {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Set `key` in the child's environment (the rest is this process's).
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Command {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Let the child inherit (a duplicate of) `handle`: returns the value the handle
    /// has in the child, to be passed to it (argument or environment).
    pub fn inherit(&mut self, handle: BorrowedHandle<'_>) -> io::Result<usize> {
        let dup = duplicate(handle, true)?;
        let value = dup.as_raw_handle() as usize;
        self.inherited.push(dup);
        Ok(value)
    }

    /// Let the child inherit the caller's handle `value` itself, which must be
    /// inheritable and stay open during the start: it has the same value in the child
    /// (as a POSIX descriptor passed keeps its number).
    pub fn pass(&mut self, value: usize) -> &mut Command {
        self.passed.push(value as HANDLE);
        self
    }

    /// Start the child, suspended until it is in its job. The inheritable duplicates
    /// are closed, started or not.
    pub fn spawn(mut self) -> io::Result<Child> {
        // Standard handles: input from NUL (as /dev/null on POSIX), output and errors
        // to this process's own (when it has them).
        let null_input = open_nul()?;
        let stdin = self.inherit(null_input.as_handle())?;
        let stdout = self.inherit_std(STD_OUTPUT_HANDLE)?;
        let stderr = self.inherit_std(STD_ERROR_HANDLE)?;
        let handles: Vec<HANDLE> = self
            .inherited
            .iter()
            .map(|h| h.as_raw_handle() as HANDLE)
            .chain(self.passed.iter().copied())
            .collect();
        let attributes = AttributeList::with_handles(&handles)?;

        let mut command_line = command_line(&self.program, &self.args);
        let environment = environment_block(&self.env);
        let program = wide(&self.program);
        // SAFETY: plain data; zeroed is a valid empty value.
        let mut startup: STARTUPINFOEXW = unsafe { std::mem::zeroed() };
        startup.StartupInfo.cb = size_of::<STARTUPINFOEXW>() as u32;
        startup.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
        startup.StartupInfo.hStdInput = stdin as HANDLE;
        startup.StartupInfo.hStdOutput = stdout as HANDLE;
        startup.StartupInfo.hStdError = stderr as HANDLE;
        startup.lpAttributeList = attributes.ptr();
        let mut flags =
            CREATE_SUSPENDED | CREATE_UNICODE_ENVIRONMENT | EXTENDED_STARTUPINFO_PRESENT;
        if self.own_group {
            flags |= CREATE_NEW_PROCESS_GROUP;
        }
        // SAFETY: plain data for the call to fill.
        let mut info: PROCESS_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: every pointer is to a live NUL-terminated buffer or structure that
        // outlives the call; the command line buffer is writable, as the call requires.
        check(unsafe {
            CreateProcessW(
                program.as_ptr(),
                command_line.as_mut_ptr(),
                null(),
                null(),
                1, // inherit: only the handles of the list
                flags,
                environment.as_ptr().cast(),
                null(),
                &startup.StartupInfo,
                &mut info,
            )
        })?;
        // SAFETY: both handles were just returned to us.
        let (process, thread) = unsafe {
            (
                OwnedHandle::from_raw_handle(info.hProcess as RawHandle),
                OwnedHandle::from_raw_handle(info.hThread as RawHandle),
            )
        };
        let placed = Job::new().and_then(|job| {
            job.assign(process.as_handle())?;
            Ok(job)
        });
        let job = match placed {
            Ok(job) => job,
            Err(err) => {
                // A child outside a job could outlive us: it never runs.
                let _ = terminate(process.as_handle(), 1);
                return Err(err);
            }
        };
        // SAFETY: resumes the suspended main thread of our child.
        if unsafe { ResumeThread(thread.as_raw_handle() as HANDLE) } == u32::MAX {
            let err = io::Error::last_os_error();
            let _ = job.terminate(1);
            return Err(err);
        }
        Ok(Child {
            pid: info.dwProcessId,
            process,
            job,
        })
    }

    /// Inherit this process's standard handle `which`, if it has one: its value in the
    /// child, or 0.
    fn inherit_std(&mut self, which: u32) -> io::Result<usize> {
        // SAFETY: GetStdHandle has no preconditions.
        let handle = unsafe { GetStdHandle(which) };
        if handle.is_null() || handle == windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE {
            return Ok(0);
        }
        // SAFETY: the standard handle stays open during this start (a caller closing it
        // meanwhile would race with every user of it, as in any process).
        let borrowed = unsafe { BorrowedHandle::borrow_raw(handle as RawHandle) };
        // A standard handle that cannot be duplicated (a console pseudo-handle of old
        // systems) is left out rather than failing the start.
        Ok(self.inherit(borrowed).unwrap_or(0))
    }
}

/// A duplicate of `handle` in this process, inheritable or not.
pub fn duplicate(handle: BorrowedHandle<'_>, inheritable: bool) -> io::Result<OwnedHandle> {
    let mut dup: HANDLE = null_mut();
    // SAFETY: duplicates a live handle of this process into this process.
    check(unsafe {
        DuplicateHandle(
            GetCurrentProcess(),
            handle.as_raw_handle() as HANDLE,
            GetCurrentProcess(),
            &mut dup,
            0,
            inheritable as i32,
            DUPLICATE_SAME_ACCESS,
        )
    })?;
    // SAFETY: a fresh handle that we now own.
    Ok(unsafe { OwnedHandle::from_raw_handle(dup as RawHandle) })
}

/// A duplicate of `handle` in `process` (a handle with PROCESS_DUP_HANDLE access), not
/// inheritable: the value it has there, for that process to use and close.
pub fn duplicate_into(
    handle: BorrowedHandle<'_>,
    process: BorrowedHandle<'_>,
) -> io::Result<usize> {
    let mut remote: HANDLE = null_mut();
    // SAFETY: duplicates our live handle into a process handle the caller holds.
    check(unsafe {
        DuplicateHandle(
            GetCurrentProcess(),
            handle.as_raw_handle() as HANDLE,
            process.as_raw_handle() as HANDLE,
            &mut remote,
            0,
            0,
            DUPLICATE_SAME_ACCESS,
        )
    })?;
    Ok(remote as usize)
}

/// The NUL device, for reading, not inheritable (the start duplicates it).
fn open_nul() -> io::Result<OwnedHandle> {
    let name = wide(OsStr::new("NUL"));
    let security = SECURITY_ATTRIBUTES {
        nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
        lpSecurityDescriptor: null_mut(),
        bInheritHandle: 0,
    };
    // SAFETY: opens a device by a NUL-terminated name; the result is checked.
    owned(unsafe {
        CreateFileW(
            name.as_ptr(),
            GENERIC_READ,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            &security,
            OPEN_EXISTING,
            FILE_ATTRIBUTE_NORMAL,
            null_mut(),
        )
    })
}

/// A process-thread attribute list holding one attribute: the handles to inherit.
struct AttributeList {
    buffer: Vec<usize>,
    /// The list refers to this array, which must live as long as the list.
    _handles: Box<[HANDLE]>,
}

impl AttributeList {
    fn with_handles(handles: &[HANDLE]) -> io::Result<AttributeList> {
        let mut size = 0usize;
        // SAFETY: asks for the size of a one-attribute list (fails with
        // ERROR_INSUFFICIENT_BUFFER by design, having set `size`).
        unsafe { InitializeProcThreadAttributeList(null_mut(), 1, 0, &mut size) };
        let list = AttributeList {
            buffer: vec![0usize; size.div_ceil(size_of::<usize>())],
            _handles: handles.to_vec().into_boxed_slice(),
        };
        // SAFETY: the buffer holds `size` bytes, aligned for the list.
        check(unsafe { InitializeProcThreadAttributeList(list.ptr(), 1, 0, &mut size) })?;
        // SAFETY: the list was initialized above; the value points to the boxed array,
        // which lives as long as the list.
        let updated = check(unsafe {
            UpdateProcThreadAttribute(
                list.ptr(),
                0,
                PROC_THREAD_ATTRIBUTE_HANDLE_LIST as usize,
                list._handles.as_ptr().cast(),
                std::mem::size_of_val(&*list._handles),
                null_mut(),
                null(),
            )
        });
        if let Err(err) = updated {
            // SAFETY: initialized above, deleted once.
            unsafe { DeleteProcThreadAttributeList(list.ptr()) };
            std::mem::forget(list);
            return Err(err);
        }
        Ok(list)
    }

    fn ptr(&self) -> LPPROC_THREAD_ATTRIBUTE_LIST {
        self.buffer.as_ptr() as LPPROC_THREAD_ATTRIBUTE_LIST
    }
}

impl Drop for AttributeList {
    fn drop(&mut self) {
        // SAFETY: the list was initialized in `with_handles`.
        unsafe { DeleteProcThreadAttributeList(self.ptr()) };
    }
}

/// The command line: the program, then each argument quoted so that the C runtime's
/// parsing (CommandLineToArgvW, and Python's) gives it back unchanged.
fn command_line(program: &OsStr, args: &[OsString]) -> Vec<u16> {
    // The program name is parsed apart: quotes delimit it, backslashes are plain.
    let mut line: Vec<u16> = Vec::new();
    line.push(b'"' as u16);
    line.extend(program.encode_wide());
    line.push(b'"' as u16);
    for arg in args {
        line.push(b' ' as u16);
        quote_into(&mut line, arg);
    }
    line.push(0);
    line
}

/// Append `arg` quoted: inside quotes, backslashes count only before a quote, so a run
/// of them before a quote (or the closing one) is doubled.
fn quote_into(line: &mut Vec<u16>, arg: &OsStr) {
    let units: Vec<u16> = arg.encode_wide().collect();
    let plain = !units.is_empty()
        && !units
            .iter()
            .any(|&u| matches!(u, 0x20 | 0x09 | 0x0a | 0x0b | 0x22));
    if plain {
        line.extend(units);
        return;
    }
    line.push(b'"' as u16);
    let mut backslashes = 0;
    for &unit in &units {
        if unit == b'\\' as u16 {
            backslashes += 1;
            continue;
        }
        let run = if unit == b'"' as u16 {
            2 * backslashes + 1
        } else {
            backslashes
        };
        line.extend(std::iter::repeat_n(b'\\' as u16, run));
        line.push(unit);
        backslashes = 0;
    }
    line.extend(std::iter::repeat_n(b'\\' as u16, 2 * backslashes));
    line.push(b'"' as u16);
}

/// This process's environment with `overrides` applied (names compare without case,
/// as Windows does), sorted by name, as a UTF-16 block.
fn environment_block(overrides: &[(OsString, OsString)]) -> Vec<u16> {
    let key = |name: &OsStr| name.to_string_lossy().to_uppercase();
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(name, _)| !overrides.iter().any(|(k, _)| key(k) == key(name)))
        .collect();
    vars.extend(overrides.iter().cloned());
    vars.sort_by_key(|(name, _)| key(name));
    let mut block = Vec::new();
    for (name, value) in &vars {
        block.extend(name.encode_wide());
        block.push(b'=' as u16);
        block.extend(value.encode_wide());
        block.push(0);
    }
    if vars.is_empty() {
        block.push(0);
    }
    block.push(0);
    block
}

#[cfg(test)]
mod tests {
    use super::super::test_child::{child, Event};
    use super::*;

    fn quoted(arg: &str) -> String {
        let mut line = Vec::new();
        quote_into(&mut line, OsStr::new(arg));
        String::from_utf16(&line).unwrap()
    }

    #[test]
    fn arguments_are_quoted_for_the_c_runtime() {
        assert_eq!(quoted("plain"), "plain");
        assert_eq!(quoted(""), "\"\"");
        assert_eq!(quoted("a b"), "\"a b\"");
        assert_eq!(quoted(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(quoted(r"C:\dir\"), r"C:\dir\");
        assert_eq!(quoted(r"C:\my dir\"), r#""C:\my dir\\""#);
        assert_eq!(quoted(r#"a\"b"#), r#""a\\\"b""#);
    }

    #[test]
    fn a_child_gets_its_arguments_and_environment_back_unchanged() {
        let args = [
            "",
            "a b",
            r#"q"uote"#,
            r"back\slash\",
            r"C:\my dir\",
            "tab\there",
        ];
        let mut cmd = child("echo_args");
        for arg in args {
            cmd.arg(arg);
        }
        cmd.env("LOKY_TEST_EXPECT", args.join("\u{1f}"));
        cmd.env("loky_test_mixed_case", "kept");
        let child = cmd.spawn().unwrap();
        assert_eq!(child.wait(30_000).unwrap(), Some(0));
    }

    #[test]
    fn a_child_inherits_the_listed_handle_only() {
        let listed = Event::new().unwrap();
        let unlisted = Event::new().unwrap();
        // Inheritable on purpose: only the list may keep it from the child.
        let stray = duplicate(unlisted.as_handle(), true).unwrap();
        let mut cmd = child("set_events");
        let value = cmd.inherit(listed.as_handle()).unwrap();
        cmd.env(
            "LOKY_TEST_EVENTS",
            format!("{value},{}", stray.as_raw_handle() as usize),
        );
        let child = cmd.spawn().unwrap();
        assert_eq!(child.wait(30_000).unwrap(), Some(0));
        assert!(listed.is_set(), "the listed handle reached the child");
        assert!(
            !unlisted.is_set(),
            "the unlisted inheritable handle did not"
        );
    }

    #[test]
    fn the_exit_code_is_reported() {
        let mut cmd = child("exit");
        cmd.env("LOKY_TEST_CODE", "3");
        let child = cmd.spawn().unwrap();
        assert_eq!(child.wait(30_000).unwrap(), Some(3));
        assert_eq!(child.try_wait().unwrap(), Some(3));
        assert_eq!(child.job.process_ids().unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn a_crash_ends_the_child_at_once_with_its_exception_code() {
        let child = child("crash").spawn().unwrap();
        // STATUS_ACCESS_VIOLATION, with no error-report dialog holding the process.
        assert_eq!(child.wait(30_000).unwrap(), Some(0xC000_0005));
    }
}
