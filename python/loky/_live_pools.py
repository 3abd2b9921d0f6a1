"""The pools alive in this process, and what reaches all of them at once: the
interpreter's exit and Ctrl-C.

    executor starts its pool ─► add(state)        result thread ends ─► discard(state)
    interpreter exits (before threads are joined) ─► every live pool shut down, its
        result thread (and log thread) joined: pending work finishes, or after an
        unhandled KeyboardInterrupt the workers are ended at once
    SIGINT in the parent ─► every live pool's busy workers get SIGINT, then Python's
        default handler raises KeyboardInterrupt here

A terminal's Ctrl-C signals the whole foreground process group, but workers lead groups
of their own (so that ending a worker ends its children): the parent's SIGINT handler
therefore passes the signal on to the workers that run a task, whose tasks get
KeyboardInterrupt as they would with loky; idle workers ignore it. It is installed only
over Python's default handler, so a user's own handler keeps working (and then decides
what happens).
"""

import signal
import sys
import threading

from . import _core, _cpython

# Pool states whose result thread is running.
_pools = set()
# Set once the interpreter exits: submits are refused from then on.
interpreter_exiting = False


def add(state):
    _pools.add(state)


def discard(state):
    _pools.discard(state)


def _interrupted():
    """Whether the interpreter is exiting because of an unhandled KeyboardInterrupt."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


def _on_interpreter_exit():
    """Let pending tasks finish, then stop every pool before the interpreter goes. After
    Ctrl-C (an unhandled KeyboardInterrupt), end the workers at once instead: the user
    asked the program to stop."""
    global interpreter_exiting
    interpreter_exiting = True
    how = _core.Shutdown.TERMINATE if _interrupted() else _core.Shutdown.GRACEFUL
    states = list(_pools)
    for state in states:
        state.pool.shutdown(how)
    for state in states:
        for thread in (state.thread, state.log_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join()


_cpython.register_before_threads_join(_on_interpreter_exit)


def _forward_and_raise(signum, frame):
    for state in list(_pools):
        try:
            state.pool.interrupt()
        except _core.InheritedPoolError:
            pass
    signal.default_int_handler(signum, frame)


def forward_interrupts():
    """Install the forwarding SIGINT handler if Python's default one is in place (and
    this is the main thread, where handlers are set)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _forward_and_raise)
