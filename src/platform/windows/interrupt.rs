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

/// What a worker's listener does: raise SIGINT in this process.
pub fn raise_sigint() {
    // SAFETY: the C runtime's raise runs the SIGINT handler installed in this process
    // (the interpreter's, which only records the signal and wakes its waits).
    unsafe { libc::raise(libc::SIGINT) };
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
