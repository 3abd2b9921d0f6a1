//! Ctrl-C for a busy worker on Windows, where there is no signal to send to another
//! process: the parent holds one event per worker, the worker inherits it, and a thread
//! of the worker waits on it and raises SIGINT in the worker (the C runtime's `raise`,
//! which runs the interpreter's own SIGINT handler: a task blocked in `time.sleep` or
//! running Python code gets KeyboardInterrupt, as with a POSIX SIGINT).
//!
//! ```text
//!  parent (its Ctrl-C handler): Interrupt::raise ── SetEvent ──► worker's listener thread
//!                                                               raise(SIGINT) in the worker
//! ```
//!
//! This needs no console (pythonw, services and CI have none) and reaches only the
//! workers the parent chooses, once each.

use std::io;
use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, OwnedHandle};
use std::ptr::null;

use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleA, GetProcAddress};
use windows_sys::Win32::System::Threading::{
    CreateEventW, SetEvent, WaitForSingleObject, INFINITE,
};

use super::{check, owned};

/// The parent's side: one per worker.
pub struct Interrupt(OwnedHandle);

impl Interrupt {
    /// An auto-reset event (each raise wakes the listener once). Not inheritable: the
    /// start passes it on (`Command::inherit`).
    pub fn new() -> io::Result<Interrupt> {
        // SAFETY: an unnamed auto-reset event; the result is checked.
        Ok(Interrupt(owned(unsafe {
            CreateEventW(null(), 0, 0, null())
        })?))
    }

    pub fn as_handle(&self) -> BorrowedHandle<'_> {
        self.0.as_handle()
    }

    /// Interrupt the worker's task.
    pub fn raise(&self) -> io::Result<()> {
        // SAFETY: our live event.
        check(unsafe { SetEvent(self.0.as_raw_handle() as HANDLE) })
    }
}

/// The worker's side: start a thread that runs `on_interrupt` each time the event
/// `event` (inherited, now owned here) is raised. It runs for the life of the process.
pub fn listen(event: OwnedHandle, on_interrupt: fn()) -> io::Result<()> {
    std::thread::Builder::new()
        .name("loky-interrupt".into())
        .spawn(move || loop {
            // SAFETY: waits on our live event.
            let woken = unsafe { WaitForSingleObject(event.as_raw_handle() as HANDLE, INFINITE) };
            if woken != 0 {
                return; // the handle is unusable: nothing more will come
            }
            on_interrupt();
        })?;
    Ok(())
}

/// What a worker's listener does: raise SIGINT in this process, through the C runtime
/// whose handler table the interpreter uses (`interpreter_runtime`).
pub fn raise_sigint() {
    match runtime_function(c"raise") {
        // SAFETY: the C runtime's `int raise(int)`; it runs the SIGINT handler
        // installed there (the interpreter's, which only records the signal and wakes
        // its waits).
        Some(raise) => unsafe {
            let raise: unsafe extern "C" fn(libc::c_int) -> libc::c_int =
                std::mem::transmute(raise);
            raise(libc::SIGINT);
        },
        // SAFETY: as above, with this crate's own C runtime.
        None => unsafe {
            libc::raise(libc::SIGINT);
        },
    }
}

/// The C runtime every CPython since 3.5 links, the Universal CRT: the interpreter
/// installs its signal handlers in that runtime's table. This crate's own C runtime
/// (msvcrt.dll, with the GNU toolchain) keeps a table of its own, where a raised SIGINT
/// finds no handler and ends the process.
const INTERPRETER_RUNTIME: &std::ffi::CStr = c"ucrtbase.dll";

/// `name` in the interpreter's C runtime, if this process has loaded it.
fn runtime_function(name: &std::ffi::CStr) -> Option<unsafe extern "system" fn() -> isize> {
    // SAFETY: looks a loaded module up by a NUL-terminated name (no load, no
    // reference taken: the runtime stays loaded as long as the interpreter).
    let module = unsafe { GetModuleHandleA(INTERPRETER_RUNTIME.as_ptr().cast()) };
    if module.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated export name, in a loaded module.
    unsafe { GetProcAddress(module, name.as_ptr().cast()) }
}

/// Install `handler` for SIGINT in the same C runtime `raise_sigint` raises it in.
#[cfg(test)]
pub fn on_sigint(handler: extern "C" fn(libc::c_int)) {
    type Signal = unsafe extern "C" fn(libc::c_int, libc::sighandler_t) -> libc::sighandler_t;
    let handler = handler as *const () as libc::sighandler_t;
    match runtime_function(c"signal") {
        // SAFETY: the C runtime's `signal`; the handler only adds to an atomic counter.
        Some(signal) => unsafe {
            let signal: Signal = std::mem::transmute(signal);
            signal(libc::SIGINT, handler);
        },
        // SAFETY: as above, with this crate's own C runtime.
        None => unsafe {
            libc::signal(libc::SIGINT, handler);
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_child::{child, wait_for_event, Event};
    use super::*;

    #[test]
    fn a_raised_interrupt_reaches_the_workers_sigint_handler_once_per_raise() {
        let interrupt = Interrupt::new().unwrap();
        let listening = Event::new().unwrap();
        let mut cmd = child("interrupted");
        let values = [
            cmd.inherit(interrupt.as_handle()).unwrap(),
            cmd.inherit(listening.as_handle()).unwrap(),
        ];
        cmd.env("LOKY_TEST_EVENTS", format!("{},{}", values[0], values[1]));
        let worker = cmd.spawn().unwrap();
        assert!(wait_for_event(&listening, 30_000), "the worker listens");
        interrupt.raise().unwrap();
        // The worker exits with the number of SIGINTs its handler saw, once it saw one
        // and then waited a moment for a stray second one.
        assert_eq!(worker.wait(30_000).unwrap(), Some(1));
    }
}
