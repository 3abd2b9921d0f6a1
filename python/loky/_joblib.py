"""Make joblib run on this package instead of the copy of loky it vendors.

joblib imports its process pool as ``joblib.externals.loky`` and has no setting to use
another one. The switch installed here is an import hook: every module under
``joblib.externals.loky`` resolves to the module of the same name under ``loky``. The
very same module object is registered under both names, so what joblib writes into a
module (``resource_tracker._CLEANUP_FUNCS``...) is seen by this package.

Three ways to turn it on, all equivalent:

- ``loky.use_with_joblib()`` in the program, before ``import joblib``;
- ``LOKY_JOBLIB=1`` in the environment, with no code change: the ``loky_joblib.pth``
  file installed with the package runs `install_from_env` when an interpreter starts
  (an editable install has no such file: there, call ``use_with_joblib()``);
- nothing to do in worker processes: a worker started by this package installs the
  hook whenever its parent has it, before it unpickles anything.
"""

import importlib
import importlib.util
import os
import sys
from importlib.machinery import ModuleSpec

__all__ = ["use_with_joblib", "install", "installed", "install_from_env"]

VENDORED = "joblib.externals.loky"
ENV_VAR = "LOKY_JOBLIB"

# The content of ``loky_joblib.pth``, installed next to the package: site runs lines
# that start with "import" at every interpreter start, so it must be cheap when the
# variable is not set, and it must not fail.
PTH_LINE = (
    'import os; "LOKY_JOBLIB" in os.environ and '
    '__import__("loky._joblib")._joblib.install_from_env()\n'
)


def _real_name(fullname):
    """``joblib.externals.loky.x.y`` -> ``loky.x.y``; None for other names."""
    if fullname == VENDORED:
        return "loky"
    if fullname.startswith(VENDORED + "."):
        return "loky" + fullname[len(VENDORED) :]
    return None


class _AliasLoader:
    """Loads an alias by importing the real module and handing back that object."""

    def __init__(self, real_name):
        self.real_name = real_name
        self.real_spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.real_name)
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module):
        # The module has run already, under its real name. The import system has just
        # pointed its __spec__ at the alias: point it back, so that reload and
        # introspection keep seeing `loky.*`.
        module.__spec__ = self.real_spec


class JoblibAliasFinder:
    """A meta path finder that resolves ``joblib.externals.loky[.*]`` to ``loky[.*]``."""

    def find_spec(self, fullname, path=None, target=None):
        real_name = _real_name(fullname)
        if real_name is None:
            return None
        real_spec = importlib.util.find_spec(real_name)
        if real_spec is None:
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: joblib.externals.loky is redirected to "
                f"the loky package at {os.path.dirname(__file__)} (LOKY_JOBLIB or "
                f"loky.use_with_joblib()), which has no module {real_name!r}.",
                name=fullname,
            )
        is_package = real_spec.submodule_search_locations is not None
        return ModuleSpec(fullname, _AliasLoader(real_name), is_package=is_package)

    def __repr__(self):
        return f"<{type(self).__name__}: {VENDORED} -> loky>"


_finder = JoblibAliasFinder()


def installed():
    """True if ``joblib.externals.loky`` resolves to this package in this process."""
    return _finder in sys.meta_path


def _vendored_modules():
    return sorted(
        name
        for name, module in sys.modules.items()
        if _real_name(name) is not None
        and module is not sys.modules.get(_real_name(name))
    )


def install():
    """Install the import hook in this process (idempotent).

    Raises RuntimeError if joblib's own copy of loky is already imported: joblib would
    then hold objects from both, which cannot work.
    """
    if installed():
        return
    vendored = _vendored_modules()
    if vendored:
        raise RuntimeError(
            "joblib's own copy of loky is already imported in this process "
            f"({', '.join(vendored[:3])}{', ...' if len(vendored) > 3 else ''}), so "
            "joblib cannot be switched to this loky package any more. Call "
            "loky.use_with_joblib() before the first 'import joblib' (for instance at "
            "the top of your main script), or set LOKY_JOBLIB=1 in the environment."
        )
    sys.meta_path.insert(0, _finder)


def use_with_joblib() -> None:
    """Make joblib use this package as its process pool (``joblib.externals.loky``).

    Call it before ``import joblib``. It also sets ``LOKY_JOBLIB=1`` in ``os.environ``
    so that Python subprocesses started from here switch too; the workers of this
    package's executors follow their parent in any case.
    """
    install()
    os.environ[ENV_VAR] = "1"


def env_requests_switch(environ=os.environ):
    return environ.get(ENV_VAR, "").strip().lower() not in ("", "0", "false", "no", "off")


def install_from_env():
    """Run at interpreter start (from ``loky_joblib.pth``): install the hook if
    ``LOKY_JOBLIB`` asks for it. Never raises: a start-up hook must not break the
    interpreter."""
    if not env_requests_switch():
        return
    try:
        install()
    except Exception as exc:  # pragma: no cover - joblib imported by another .pth
        sys.stderr.write(f"loky: LOKY_JOBLIB is set but {exc}\n")
