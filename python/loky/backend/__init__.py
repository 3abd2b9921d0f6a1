"""Process-management helpers shared by the executors: contexts, pickling, utilities.

Importing this package registers the "loky" and "loky_init_main" multiprocessing
contexts (see `context`), without changing multiprocessing's start method.
"""

from .context import get_context

__all__ = ["get_context"]
