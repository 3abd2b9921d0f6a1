//! Start a worker on Windows (the counterpart of `spawn.rs`): a fresh interpreter that
//! inherits exactly two handles besides its standard ones, the client end of a new
//! named pipe (its channel) and an event (its Ctrl-C, see `interrupt`), whose values
//! it finds on its command line; in a Job object of its own (`job`) and a process group
//! of its own (the console's Ctrl-C reaches the parent only, which passes it on).
//!
//! There is no fork(), so no template: every worker, replacements included, is a
//! whole interpreter start.

use std::io;
use std::os::windows::io::AsHandle;

use crate::platform::interrupt::Interrupt;
use crate::platform::pipe::{self, PipeEnd};
use crate::platform::process::{Child, Command};

/// The options a worker finds its handles' values in (see `worker_handles`).
const CHANNEL_OPTION: &str = "--loky-channel=";
const INTERRUPT_OPTION: &str = "--loky-interrupt=";

/// How to start a worker: the program, its arguments and the environment overrides.
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Handles the worker inherits under the same values (inheritable ones: a
    /// tracker's pipe, the handles of locks and queues handed over in `initargs`).
    pub pass_fds: Vec<i32>,
}

/// A started worker: its pid, its process and Job object, the parent's end of its
/// channel, and the event that interrupts its task.
pub struct Spawned {
    pub pid: i32,
    pub child: Child,
    pub channel: PipeEnd,
    pub interrupt: Interrupt,
}

/// The parent's end of a worker's channel.
pub type ChannelEnd = PipeEnd;

/// A new channel: (the parent's end, the worker's end).
pub fn channel_pair() -> io::Result<(PipeEnd, PipeEnd)> {
    pipe::pair()
}

/// A worker forked by the template: there is no template on Windows, so none.
pub fn forked(_pid: i32, _channel: ChannelEnd) -> Option<Spawned> {
    None
}

pub fn spawn_worker(cmd: &WorkerCommand) -> io::Result<Spawned> {
    let (ours, theirs) = channel_pair()?;
    let interrupt = Interrupt::new()?;
    let mut command = Command::new(&cmd.program);
    for arg in &cmd.args {
        command.arg(arg);
    }
    for (key, value) in &cmd.env {
        command.env(key, value);
    }
    for &handle in &cmd.pass_fds {
        command.pass(handle as u32 as usize);
    }
    let channel = command.inherit(theirs.as_handle())?;
    let event = command.inherit(interrupt.as_handle())?;
    command.arg(format!("{CHANNEL_OPTION}{channel}"));
    command.arg(format!("{INTERRUPT_OPTION}{event}"));
    command.new_process_group();
    let child = command.spawn()?;
    drop(theirs); // the worker holds the only client end now
    Ok(Spawned {
        pid: child.pid as i32,
        child,
        channel: ours,
        interrupt,
    })
}

/// In a worker: the values of its channel's and its interrupt event's handles, from its
/// command line; None if it was not started as a worker.
pub fn worker_handles() -> Option<(usize, usize)> {
    let find = |option: &str| {
        std::env::args().find_map(|arg| arg.strip_prefix(option)?.parse::<usize>().ok())
    };
    Some((find(CHANNEL_OPTION)?, find(INTERRUPT_OPTION)?))
}
