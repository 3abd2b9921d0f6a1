"""The Future returned by the executors."""

from concurrent.futures import Future as _StdFuture
from concurrent.futures._base import LOGGER, PENDING


class Future(_StdFuture):
    """A `concurrent.futures.Future` whose done-callbacks may raise: the error is logged
    and the remaining callbacks still run.

    A future created by an executor can be cancelled only while no worker has received
    its task.
    """

    # Set by the executor: takes the task back from the queue; False once it is out.
    _unqueue = None

    def cancel(self):
        with self._condition:
            if self._state == PENDING and self._unqueue is not None:
                if not self._unqueue():
                    # A worker already holds the task.
                    self.set_running_or_notify_cancel()
                    return False
        return super().cancel()

    def _invoke_callbacks(self):
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException:
                LOGGER.exception("exception calling callback for %r", self)
