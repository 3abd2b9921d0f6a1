"""What a `LokyProcess` start sends through the parent's pipe, the same on every
platform (how the pipe and the process are made is `popen_loky_posix`'s or
`popen_loky_win32`'s): the parent pickles the settings and the process object
(`start_message`); the child reads them, sets this interpreter up as they say and runs
the process (`run`)."""

import io
import pickle
import sys
from multiprocessing import process as mp_process

from .. import _cpython, _inherit
from . import reduction


def start_message(popen, settings, process_obj):
    """The bytes for the child's pipe. Multiprocessing's objects inside `process_obj`
    ask `popen` for the descriptors (Windows: handles) the child must inherit, as they
    are pickled."""
    payload = io.BytesIO()
    _cpython.set_spawning_popen(popen)
    try:
        pickle.dump(settings, payload, protocol=pickle.HIGHEST_PROTOCOL)
        reduction.dump(process_obj, payload, reducers=_cpython.mp_reducers())
    finally:
        _cpython.set_spawning_popen(None)
    return payload.getbuffer()


def run(open_pipe):
    """`open_pipe()` gives the pipe's read end (a descriptor) and the parent's sentinel.
    Exits with the process's exit code; a failure before the process runs is reported
    on stderr, with exit code 1."""
    settings = {}
    try:
        fd, parent_sentinel = open_pipe()
        with open(fd, "rb") as from_parent:
            settings = pickle.load(from_parent)
            sys.path[:] = settings["sys_path"]
            _inherit.apply(settings)
            current = mp_process.current_process()
            current._inheriting = True
            try:
                _inherit.import_main(settings["main"])
                process_obj = pickle.load(from_parent)
            finally:
                del current._inheriting
    except BaseException:
        import traceback

        name = settings.get("name", "")
        sys.stderr.write(f"loky: could not start the process {name!r}:\n")
        traceback.print_exc()
        sys.exit(1)
    exitcode = process_obj._bootstrap(parent_sentinel=parent_sentinel)
    sys.exit(exitcode)
