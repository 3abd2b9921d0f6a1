"""What the parent and its workers agree on about tasks, besides the framing (which
the core owns): the outcome tags a worker's RESULT body starts with, and the runner
of ``map(..., chunksize=n)`` chunks. Both sides import this small module, so neither
imports the other's.

A RESULT body unpickles to one of::

    (OK, value)
    (RAISED, exception, worker traceback text)
    (TASK_UNPICKLE_FAILED, worker traceback text)
    (TASK_NOT_RECEIVED, why)     the worker ran out of a resource receiving the task

A worker that cannot get ready sends INIT_FAILED, whose body unpickles to
``(exception or None, traceback text, stage)``, the stage being what it was doing:
its own SETUP, importing the parent's MAIN_MODULE, or running the INITIALIZER.
"""

OK = 0
RAISED = 1
TASK_UNPICKLE_FAILED = 2
TASK_NOT_RECEIVED = 3

SETUP = "setup"
MAIN_MODULE = "main module"
INITIALIZER = "initializer"


def run_chunk(fn, chunk):
    """One task of ``map(..., chunksize=n)``: ``fn`` applied to each argument tuple."""
    return [fn(*args) for args in chunk]
