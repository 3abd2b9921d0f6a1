"""The child's side of a `LokyProcess` start, the same on every platform (the parent's
side is `popen_loky_posix` or `popen_loky_win32`): read the settings and the process
object from the parent's pipe, set this interpreter up as they say, run the process."""

import pickle
import sys
from multiprocessing import process as mp_process

from .. import _inherit


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
