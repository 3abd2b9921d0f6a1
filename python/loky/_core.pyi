"""Typed surface of ``loky._core``, the Rust process-management core.

The core owns every byte on a socket (frames and the descriptors they carry), every
shared segment's life and every wake-up between threads; the Python layer owns every
Python object and every message a user reads. Nothing here is public API: the
``loky`` package builds its executors on it.
"""

from collections.abc import Callable, Sequence

from typing_extensions import Buffer
from typing import Final, final

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
    def __buffer__(self, flags: int, /) -> memoryview: ...

@final
class SharedSegment(Buffer):
    """A received shared-memory segment, mapped and writable through the buffer
    protocol. The segment is released to its sender once the last view is gone, and
    only by the process that received it. Holds no file descriptor."""

    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

@final
class OutgoingSegment:
    """A segment this process filled with large buffers, to send with one message."""

    def __len__(self) -> int: ...

def write_segment(buffers: Sequence[Buffer]) -> tuple[OutgoingSegment, list[int]]:
    """Copy C-contiguous `buffers` into a segment of this process's sending cache;
    returns it with each buffer's offset. Raises OSError when no segment can be made
    (out of descriptors or memory): send the buffers in-band then."""

def configure_segment_cache(max_bytes: int, max_segments: int | None = None, /) -> None:
    """Bound this process's sending cache (each kept segment holds one descriptor;
    None: a small share of the descriptors this process may open)."""

def segment_cache_usage() -> tuple[int, int]:
    """(segments kept, bytes kept) by this process's sending cache."""

def release_cached_segments() -> None:
    """Let go of every kept segment (receivers keep what they still use)."""

def fork_prepare() -> None:
    """``os.register_at_fork(before=...)``: snapshot received segments for the child."""

def fork_parent() -> None:
    """``os.register_at_fork(after_in_parent=...)``: drop the snapshots."""

def fork_child() -> None:
    """``os.register_at_fork(after_in_child=...)``: received segments become the
    child's private copies of what they held at fork time."""

# -- the pool ----------------------------------------------------------------------------

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

class WorkerDied:
    """The worker running task `task_id` died. `reason` says why the manager killed it
    (empty: it died by itself); `exitcode` is minus the signal number for a signal,
    None when the exit status cannot be known (see `children_reaped_by_kernel`)."""

    task_id: int
    pid: int
    exitcode: int | None
    reason: str

class TaskEnded:
    """The manager ended the worker running task `task_id`, with every process it
    started: `cause` is "timeout" (the task ran past its time limit) or "terminated"
    (`Future.terminate()`). A replacement starts."""

    task_id: int
    pid: int
    cause: str

class WorkerStat:
    """One worker as `Pool.stats()` sees it: `state` is "starting", "idle", "busy" or
    "exiting"; `task_id` and `running_for` (seconds) describe its running task; `rss`
    is its resident memory in bytes (None if unknown)."""

    pid: int
    state: str
    tasks_done: int
    task_id: int | None
    running_for: float | None
    rss: int | None

class WorkerStarted:
    """A worker process started (`forked`: by the template, as a replacement)."""

    pid: int
    forked: bool

class WorkerExited:
    """A worker left the pool. `reason`: "idle timeout", "task limit", "memory
    growth", "pool shrank", "shutdown", "died", "killed", "task timeout" or "task
    terminated"."""

    pid: int
    exitcode: int | None
    reason: str

class InitFailed:
    """A worker's initializer failed; `body` pickles (exception or None, traceback
    text). No more workers start."""

    pid: int
    body: Payload

class StartFailed:
    """A worker could not be started (pid 0; `errno` and `message` say why the
    system refused), or died before it was ready (`exitcode`, None if unknown). No
    more workers start."""

    pid: int
    exitcode: int | None
    errno: int | None
    message: str

class PoolClosed:
    """The manager has stopped and every worker has exited: the last event."""

Event = (
    TaskResult
    | WorkerDied
    | TaskEnded
    | WorkerStarted
    | WorkerExited
    | InitFailed
    | StartFailed
    | PoolClosed
)

class Pool:
    """A pool of worker processes driven by a manager thread (one per executor).

    A pool belongs to the process that made it: in a process forked from that one,
    `submit`, `cancel`, `resize`, `next_events` and `wait_outcome` raise
    `InheritedPoolError`; `shutdown` and `join` return at once; `pids` is empty."""

    def __init__(
        self,
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
    ) -> None:
        """Start the manager thread. Workers run `program` with `args` (plus the
        environment overrides `env` and the inherited descriptors `pass_fds`) and get
        `init` as their first message. `max_workers` of them start at once (a pool is
        made for a task on its way), then on demand; an idle one exits after
        `idle_timeout` seconds; one is replaced after `max_tasks_per_child` tasks. With
        `template_args`, replacements are forked from a template process started with
        those arguments."""

    def submit(
        self,
        task_id: int,
        body: bytes,
        segment: OutgoingSegment | None = None,
        timeout: float | None = None,
    ) -> None:
        """Queue a pickled task (kept without a copy), which may run `timeout` seconds
        at most from its start on a worker. Ids grow from call to call."""

    def cancel(self, task_id: int) -> bool:
        """Take a task back if no worker can have received it yet."""

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

    def shutdown(self, how: str) -> None:
        """Stop the pool: `how` is "graceful" (finish queued work, then stop the
        workers), "terminate" (SIGTERM every worker's process tree, SIGKILL after a
        grace period) or "kill" (SIGKILL now). Queued work is dropped unless graceful."""

    def join(self, timeout: float | None = None) -> bool:
        """Wait (without the GIL) for the manager thread to end; True once it has."""

    def owned_here(self) -> bool:
        """False in a process forked from the one that made the pool."""

    def pids(self) -> list[int]:
        """The pids of the current workers."""

    def next_events(self, timeout: float | None = None, max_events: int = 4096) -> list[Event]:
        """Wait (without the GIL) for at least one event, or `timeout` seconds, and
        return every event queued by then."""

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

    def retiring(self) -> None:
        """This worker leaves on its own (its memory grew): the tasks sent to it go to
        other workers. It exits next."""

def serve_template(parent: int) -> int:
    """Run as the pool's template on descriptor 3 for the pool of process `parent`:
    fork a worker per request (with `os.fork`), reap the workers and report their
    exit statuses. Never returns in the template, which exits once the pool is gone;
    returns in each forked child, set up as a worker on descriptor 3: the template's
    pid, for `loky._worker.main`."""

# -- processes ---------------------------------------------------------------------------

def spawn_process(
    program: str, args: list[str], env: list[tuple[str, str]], pass_fds: list[int] = ...
) -> tuple[int, int]:
    """Fork+exec a plain child with `pass_fds` inherited; (pid, sentinel). The caller
    owns the sentinel, the read end of a pipe only the child holds (readable once it
    exited), and reaps the child (waitpid)."""

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
