"""Typed surface of ``loky._core``, the Rust process-management core.

The core owns every byte on a socket (frames and the descriptors they carry), every
shared segment's life and every wake-up between threads; the Python layer owns every
Python object and every message a user reads. Nothing here is public API: the
``loky`` package builds its executors on it.

On Windows the POSIX-only functions (`spawn_process`, `serve_template`, the fork
hooks) are absent, and `cpu_count` and `physical_cores` are there.
"""

import sys
from collections.abc import Callable, Sequence

from typing_extensions import Buffer
from typing import Final, final

__all__ = [
    "__version__",
    "Pool",
    "TaskState",
    "ExitReason",
    "EndCause",
    "WorkerState",
    "Shutdown",
    "TaskResult",
    "WorkerDied",
    "Attempt",
    "TaskEnded",
    "WorkerStat",
    "WorkerStarted",
    "WorkerExited",
    "InitFailed",
    "StartFailed",
    "PoolClosed",
    "WorkerLog",
    "ForwardedLogs",
    "WorkerEndpoint",
    "LogSink",
    "TaskMessage",
    "Payload",
    "SharedSegment",
    "OutgoingSegment",
    "InheritedPoolError",
    "descendants",
    "facilities",
    "children_reaped_by_kernel",
    "watch_parent",
    "write_segment",
    "write_lasting_segment",
    "map_inherited_segment",
    "configure_segment_cache",
    "close_descriptors_beyond_limit",
    "segment_cache_usage",
    "release_cached_segments",
    "resident_bytes",
]
if sys.platform == "win32":
    __all__ += ["cpu_count", "physical_cores"]
else:
    __all__ += ["spawn_process", "serve_template", "fork_prepare", "fork_parent", "fork_child"]

__version__: Final[str]
"""The distribution's version (from the crate's Cargo.toml)."""

class InheritedPoolError(RuntimeError):
    """The pool belongs to the process this one was forked from."""

# -- byte buffers ----------------------------------------------------------------------

@final
class Payload(Buffer):
    """A message body received from a channel, readable without a copy through the
    buffer protocol (``memoryview(payload)``, ``pickle.loads(payload)``)."""

    def __len__(self) -> int: ...
    if sys.version_info >= (3, 12):  # the buffer protocol is Python-visible from 3.12
        def __buffer__(self, flags: int, /) -> memoryview: ...

@final
class SharedSegment(Buffer):
    """A shared-memory segment, mapped and writable through the buffer protocol. One
    received with a message is released to its sender once the last view is gone, and
    only by the process that received it; one inherited at start
    (`map_inherited_segment`) is mapped copy-on-write and releases nothing. Holds no
    file descriptor."""

    def __len__(self) -> int: ...
    if sys.version_info >= (3, 12):  # the buffer protocol is Python-visible from 3.12
        def __buffer__(self, flags: int, /) -> memoryview: ...

@final
class OutgoingSegment:
    """A segment this process filled with large buffers, to send with one message, or
    for processes to inherit (`write_lasting_segment`)."""

    def __len__(self) -> int: ...
    def fileno(self) -> int:
        """Its descriptor (Windows: its section's handle), owned by this object."""

def write_segment(buffers: Sequence[Buffer]) -> tuple[OutgoingSegment, list[int]]:
    """Copy C-contiguous `buffers` into a segment of this process's sending cache;
    returns it with each buffer's offset. Raises OSError when no segment can be made
    (out of descriptors or memory): send the buffers in-band then."""

def write_lasting_segment(buffers: Sequence[Buffer]) -> tuple[OutgoingSegment, list[int]]:
    """Copy C-contiguous `buffers` into a new segment that no cache keeps and no
    receiver releases: it lives while a descriptor of it is open. Raises OSError as
    `write_segment` does."""

def map_inherited_segment(fd: int) -> SharedSegment:
    """Map, copy-on-write, the segment whose descriptor (Windows: handle) `fd` this
    process inherited; takes the descriptor and closes it."""

def configure_segment_cache(max_bytes: int, max_segments: int | None = None, /) -> None:
    """Bound this process's sending cache (each kept segment holds one descriptor;
    None: a small share of the descriptors this process may open)."""

def segment_cache_usage() -> tuple[int, int]:
    """(segments kept, bytes kept) by this process's sending cache."""

def release_cached_segments() -> None:
    """Let go of every kept segment (receivers keep what they still use)."""

if sys.platform != "win32":
    def fork_prepare() -> None:
        """``os.register_at_fork(before=...)``: snapshot received segments for the
        child."""

    def fork_parent() -> None:
        """``os.register_at_fork(after_in_parent=...)``: drop the snapshots."""

    def fork_child() -> None:
        """``os.register_at_fork(after_in_child=...)``: received segments become the
        child's private copies of what they held at fork time."""

# -- named values ------------------------------------------------------------------------
# Compared by identity (`event.reason is ExitReason.DIED`); `str()` gives the words a
# log or message uses ("idle timeout").

@final
class TaskState:
    """Where a task is in its life (`Pool.task_state`); a done task has none."""

    QUEUED: TaskState
    SENT: TaskState  # written to a worker behind another task; not started
    RUNNING: TaskState
    ENDING: TaskState  # its worker is being ended for it

@final
class ExitReason:
    """Why a worker left the pool (`WorkerExited.reason`)."""

    IDLE_TIMEOUT: ExitReason
    TASK_LIMIT: ExitReason
    MEMORY_GROWTH: ExitReason  # past LOKY_MAX_MEMORY_LEAK_SIZE, said by the worker
    SHRINK: ExitReason
    SHUTDOWN: ExitReason
    DIED: ExitReason
    KILLED: ExitReason  # it broke the channel's protocol
    TASK_TIMEOUT: ExitReason
    TASK_TERMINATED: ExitReason
    MEMORY_LIMIT: ExitReason  # past max_worker_memory

@final
class EndCause:
    """Why the manager ended a task's worker (`TaskEnded.cause`, `Attempt.cause`)."""

    TIMEOUT: EndCause
    TERMINATED: EndCause
    MEMORY_LIMIT: EndCause

@final
class WorkerState:
    """What a worker does (`WorkerStat.state`)."""

    STARTING: WorkerState
    IDLE: WorkerState
    BUSY: WorkerState
    EXITING: WorkerState

@final
class Shutdown:
    """How a pool stops (`Pool.shutdown`): GRACEFUL lets queued work finish, then the
    workers leave; TERMINATE sends SIGTERM to every worker's tree, SIGKILL after a
    grace period; KILL kills them now. Queued work is dropped unless graceful."""

    GRACEFUL: Shutdown
    TERMINATE: Shutdown
    KILL: Shutdown

# -- the pool ----------------------------------------------------------------------------

@final
class TaskResult:
    """A worker returned the outcome of a task. When its large buffers could not be
    received, `segment` is None and `descriptor_dropped` (no descriptor was left in
    this process) or `map_error` says why."""

    task_id: int
    pid: int
    body: Payload
    segment: SharedSegment | None
    descriptor_dropped: bool
    map_error: str | None

@final
class Attempt:
    """One run of a task that ended with its worker: the worker's `pid`, then either
    its `exitcode` (None if unknown) and why the manager killed it (`reason`, empty if
    it died by itself), or the `cause` for which the manager ended it."""

    pid: int
    exitcode: int | None
    reason: str
    cause: EndCause | None

@final
class WorkerDied:
    """The worker running task `task_id` died, and the task is not run again.
    `reason` says why the manager killed it (empty: it died by itself); `exitcode`
    is minus the signal number for a signal, None when the exit status cannot be
    known (see `children_reaped_by_kernel`); `attempts`: every run of the task that
    ended with its worker, this one last."""

    task_id: int
    pid: int
    exitcode: int | None
    reason: str
    attempts: list[Attempt]

@final
class TaskEnded:
    """The manager ended the worker running task `task_id`, with every process it
    started, for `cause` (`peak_rss`: with MEMORY_LIMIT, the most memory the worker
    was seen to hold). A replacement starts; `attempts` as for WorkerDied."""

    task_id: int
    pid: int
    cause: EndCause
    peak_rss: int | None
    attempts: list[Attempt]

@final
class WorkerStat:
    """One worker as `Pool.stats()` sees it: `task_id` and `running_for` (seconds)
    describe its running task; `rss` is its resident memory in bytes (None if
    unknown)."""

    pid: int
    state: WorkerState
    tasks_done: int
    task_id: int | None
    running_for: float | None
    rss: int | None

@final
class WorkerStarted:
    """A worker process started (`forked`: by the template, as a replacement)."""

    pid: int
    forked: bool

@final
class WorkerExited:
    """A worker left the pool, and why."""

    pid: int
    exitcode: int | None
    reason: ExitReason

@final
class InitFailed:
    """A worker's initializer failed; `body` pickles (exception or None, traceback
    text). No more workers start."""

    pid: int
    body: Payload

@final
class StartFailed:
    """A worker could not be started (pid 0; `errno` and `message` say why the
    system refused), or died before it was ready (`exitcode`, None if unknown). No
    more workers start."""

    pid: int
    exitcode: int | None
    errno: int | None
    message: str

@final
class PoolClosed:
    """The manager has stopped and every worker has exited: the last event."""

@final
class WorkerLog:
    """A log record a worker forwarded: `body` pickles the record's attributes (see
    `loky._worker_logs`); `pid`: the worker's."""

    pid: int
    body: Payload

@final
class ForwardedLogs:
    """What `Pool.next_logs` gives: the records forwarded since the last call, in the
    order each worker sent them, and how many were `dropped` meanwhile (by the workers
    or here) because they came faster than they were taken."""

    records: list[WorkerLog]
    dropped: int

_Event = (
    TaskResult
    | WorkerDied
    | TaskEnded
    | WorkerStarted
    | WorkerExited
    | InitFailed
    | StartFailed
    | PoolClosed
)

@final
class Pool:
    """A pool of worker processes driven by a manager thread (one per executor).

    A pool belongs to the process that made it: in a process forked from that one,
    `submit`, `cancel`, `resize`, `next_events` and `wait_outcome` raise
    `InheritedPoolError`; `shutdown` and `join` return at once; `pids` is empty."""

    def __new__(
        cls,
        *,
        program: str,
        args: list[str],
        env: list[tuple[str, str]],
        init: bytes,
        max_workers: int,
        idle_timeout: float | None = None,
        max_tasks_per_child: int | None = None,
        pass_fds: list[int] = ...,
        template_args: list[str] | None = None,
        max_worker_memory: int | None = None,
        forward_logs: bool = False,
    ) -> Pool:
        """Start the manager thread. Workers run `program` with `args` (plus the
        environment overrides `env` and the inherited descriptors `pass_fds`) and get
        `init` as their first message. `max_workers` of them start at once (a pool is
        made for a task on its way), then on demand; an idle one exits after
        `idle_timeout` seconds; one is replaced after `max_tasks_per_child` tasks. With
        `template_args`, replacements are forked from a template process started with
        those arguments. With `max_worker_memory` (bytes), the resident memory of
        workers running a task is looked at every 25 ms, and one past the limit by half
        again is ended at once (TaskEnded, MEMORY_LIMIT). With `forward_logs`, the
        workers' LOG messages are kept (bounded: records that find the queue full are
        dropped and counted) for `next_logs`."""

    def submit(
        self,
        task_id: int,
        body: bytes,
        segment: OutgoingSegment | None = None,
        timeout: float | None = None,
        retries: int = 0,
        retry_on_timeout: bool = False,
    ) -> None:
        """Queue a pickled task (kept without a copy), which may run `timeout` seconds
        at most from its start on a worker, and runs again up to `retries` times after
        its worker died under it (a run past its time limit counts as such a death
        only with `retry_on_timeout`). Ids grow from call to call."""

    def cancel(self, task_id: int) -> bool:
        """Take a task back if no worker can have received it yet."""

    def task_state(self, task_id: int) -> TaskState | None:
        """Where task `task_id` is in its life; None once it is done (or taken
        back)."""

    def terminate(self, task_id: int) -> bool:
        """End a task whatever its state: True if it was taken back from the queue;
        False if a worker may hold it: that worker is ended once it runs the task, and
        a TaskEnded event follows (unless the task finished first)."""

    def interrupt(self) -> None:
        """Ctrl-C: pass SIGINT on to the process group of every worker running a task."""

    def stats(self) -> list[WorkerStat]:
        """A snapshot of the workers, from the manager thread."""

    def resize(self, max_workers: int) -> None:
        """Change the number of workers; idle ones leave first when shrinking."""

    def shutdown(self, how: Shutdown) -> None:
        """Stop the pool as `how` says."""

    def join(self, timeout: float | None = None) -> bool:
        """Wait (without the GIL) for the manager thread to end; True once it has."""

    def owned_here(self) -> bool:
        """False in a process forked from the one that made the pool."""

    def pids(self) -> list[int]:
        """The pids of the current workers."""

    def next_events(self, timeout: float | None = None, max_events: int = 4096) -> list[_Event]:
        """Wait (without the GIL) for at least one event, or `timeout` seconds, and
        return every event queued by then."""

    def next_logs(self, timeout: float | None = None) -> ForwardedLogs | None:
        """Wait (without the GIL) up to `timeout` seconds (None: as long as needed) for
        log records the workers forwarded, and take them: an empty batch if the time
        ran out; None once the pool has closed and every record was taken, or if the
        pool was made without `forward_logs`."""

    def wait_outcome(
        self,
        task_id: int,
        timeout: float | None,
        done: Callable[[], bool],
        apply: Callable[[TaskResult | WorkerDied | TaskEnded], object],
    ) -> BaseException | None:
        """Wait for task `task_id`'s outcome in this thread: the manager hands it over
        directly. `done()` tells whether the future is finished already. A handed-over
        event is applied by `apply(event)` before this returns (once it returns, a
        pending signal handler may run and its exception would drop the event);
        `apply` must be idempotent, as a handler raising inside it makes it run again.
        Returns an exception a signal handler raised meanwhile, for the caller to
        raise, or None. Without a handed-over event, the outcome went the usual way
        (`next_events`): wait on the future."""

    def claimed_outcomes(self) -> list[int]:
        """Tasks whose outcome is the thread's that claimed it (to take, or being
        applied): a closing pool leaves their futures to that thread."""

# -- a worker's side of its channel; the template --------------------------------------

@final
class LogSink:
    """Where a worker's logging handler puts the records it forwards
    (`WorkerEndpoint.forward_logs`)."""

    def put(self, record: bytes) -> bool:
        """Queue a pickled record for the parent, from any thread, without waiting.
        False if it was dropped: the queue was full (the drop is counted and reported
        in the parent) or closed, or this process is not the worker (a task forked
        it)."""

@final
class TaskMessage:
    """A task a worker took to run. Its shared segment comes mapped (`segment`); when
    it could not be received, `descriptor_dropped` (no descriptor was left in this
    process) or `map_error` says why."""

    @property
    def task_id(self) -> int: ...
    @property
    def body(self) -> Payload: ...
    @property
    def segment(self) -> SharedSegment | None: ...
    @property
    def descriptor_dropped(self) -> bool: ...
    @property
    def map_error(self) -> str | None: ...

@final
class WorkerEndpoint:
    """A worker's end of its channel to the manager: descriptor 3, taken over and made
    close-on-exec, so processes a task starts never inherit it. The calls say what the
    worker does; the core picks the messages and records each task taken (so that the
    manager knows, if the worker dies, whether it had started it). Blocking calls
    release the GIL; a failed one raises OSError (the manager is gone, or broke the
    protocol). After each result the endpoint watches for the next task for up to
    200 µs before it sleeps: a caller that waits for each result sends the next task
    sooner than a sleeping process wakes."""

    def __init__(self) -> None: ...
    def recv_init(self) -> Payload | None:
        """The first message: settings and the pickled initializer. None if told to
        leave."""

    def ready(self) -> None:
        """Initialized: ready for tasks."""

    def start_failed(self, report: bytes) -> None:
        """This worker cannot get ready: `report` pickles (exception or None,
        traceback text, stage) (see `loky._tasks`). It exits next."""

    def recv_task(self) -> TaskMessage | None:
        """The next task, taken to run now. None once told to leave (the manager's
        EXIT, or the end of the stream): everything sent before was taken first."""

    def send_result(
        self, task_id: int, body: bytes, segment: OutgoingSegment | None = None
    ) -> None:
        """The outcome of task `task_id`, with the segment holding its large buffers."""

    def forward_logs(self) -> LogSink:
        """Forward log records to the parent from now on: the sink the worker's logging
        handler puts them in; a thread of the core sends them as they come (bounded:
        see `crate::logs`), and each message of this endpoint goes after the records
        put before it."""

    def finish_logs(self) -> None:
        """Send the log records put so far, and forward no more (the worker exits)."""

    def retiring(self, over_limit: bool = False) -> None:
        """This worker leaves on its own: its memory grew past
        LOKY_MAX_MEMORY_LEAK_SIZE, or passed the pool's `max_worker_memory`
        (`over_limit`). The tasks sent to it go to other workers. It exits next."""

if sys.platform != "win32":
    def serve_template(parent: int) -> int:
        """Run as the pool's template on descriptor 3 for the pool of process
        `parent`: fork a worker per request (with `os.fork`), reap the workers and
        report their exit statuses. Never returns in the template, which exits once
        the pool is gone; returns in each forked child, set up as a worker on
        descriptor 3: the template's pid, for `loky._worker.main`."""

# -- processes ---------------------------------------------------------------------------

if sys.platform != "win32":
    def spawn_process(
        program: str, args: list[str], env: list[tuple[str, str]], pass_fds: list[int] = ...
    ) -> tuple[int, int]:
        """Fork+exec a plain child with `pass_fds` inherited; (pid, sentinel). The
        caller owns the sentinel, the read end of a pipe only the child holds (readable
        once it exited), and reaps the child (waitpid)."""
else:
    def cpu_count() -> int:
        """The processors this process may use: the active processors of every
        group, less what its affinity leaves out, less what its job's CPU rate cap
        allows."""

    def physical_cores() -> int | None:
        """The machine's physical cores; None if they cannot be counted."""

def resident_bytes(pid: int) -> int | None:
    """The resident memory of process `pid` in bytes (on Windows its working set);
    None if it cannot be read."""

def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, children before grandchildren."""

def facilities() -> list[tuple[str, str]]:
    """Which way each operating-system facility used so far went: (name, "fast" or
    "portable (why)"): eventfd, pidfd, memfd, mremap. LOKY_PORTABLE=1 forces
    the portable POSIX way for all of them (see src/platform/mod.rs)."""

def children_reaped_by_kernel() -> bool:
    """Whether the system reaps this process's children itself, discarding their exit
    status (SIGCHLD is ignored, or handled with SA_NOCLDWAIT)."""

def close_descriptors_beyond_limit() -> None:
    """In a process this package started, first thing: close the descriptors numbered
    at or above the soft descriptor limit, which posix_spawn could not close for it."""

def watch_parent(parent: int) -> None:
    """In a worker: end this process and everything it started as soon as `parent`
    is gone (at once if it already is)."""
