"""`LokyProcess`: a `multiprocessing` process started as a fresh interpreter by this
package's spawner (posix_spawn, never a bare fork; CreateProcess on Windows)."""

import sys
from multiprocessing.process import BaseProcess


class LokyProcess(BaseProcess):
    """A process of the "loky" context.

    Besides `multiprocessing.Process`'s arguments: `env`, environment variables (str
    to str) set in the new interpreter, and `init_main_module`, to import the parent's
    ``__main__`` there (as ``__mp_main__``) before unpickling the target.
    """

    _start_method = "loky"

    def __init__(
        self,
        group=None,
        target=None,
        name=None,
        args=(),
        kwargs={},
        daemon=None,
        init_main_module=False,
        env=None,
    ):
        super().__init__(
            group=group, target=target, name=name, args=args, kwargs=kwargs, daemon=daemon
        )
        self.env = {} if env is None else dict(env)
        self.init_main_module = init_main_module

    @staticmethod
    def _Popen(process_obj):
        if sys.platform == "win32":
            from .popen_loky_win32 import Popen
        else:
            from .popen_loky_posix import Popen

        return Popen(process_obj)


class LokyInitMainProcess(LokyProcess):
    """A process of the "loky_init_main" context: imports the parent's ``__main__``."""

    _start_method = "loky_init_main"

    def __init__(
        self, group=None, target=None, name=None, args=(), kwargs={}, daemon=None, env=None
    ):
        super().__init__(
            group=group,
            target=target,
            name=name,
            args=args,
            kwargs=kwargs,
            daemon=daemon,
            init_main_module=True,
            env=env,
        )
