"""Log records of the workers, handled by the parent's loggers (``forward_logging``).

    worker: a logging call, in any thread ─► ForwardingHandler, on the root logger, at
            the executor's level: the record's attributes as a dict, pickled
            ─► LogSink.put (never waits: dropped and counted when the core's queue is
            full) ─► the core's log writer thread ─► LOG messages, in order
    parent: the manager ─► its log queue (bounded too) ─► Pool.next_logs()
            ─► log thread: logging.makeLogRecord ─► the logger of the record's name,
            if it is enabled for the record's level (as for a call made here)

The parent's log thread is not the result thread: a slow logging handler delays the
records, never a future's result. Drops are reported once, as a WARNING on the
``loky`` logger, then at DEBUG. A worker imports this module (and `logging`) only when
the executor forwards its records.
"""

import _pickle
import atexit
import logging


# -- worker side ------------------------------------------------------------------------


class ForwardingHandler(logging.Handler):
    """Puts each record it handles in the worker's log sink, for the parent."""

    def __init__(self, sink, level, process_name):
        super().__init__(level)
        self.sink = sink
        self.process_name = process_name
        self.formatter_for_exceptions = logging.Formatter()

    def emit(self, record):
        try:
            self.sink.put(self.pickled(record))
        except Exception:
            self.handleError(record)

    def pickled(self, record):
        """The record's attributes, pickled: the message formatted (its arguments may
        not travel), the exception as text, and values that cannot be pickled as
        their repr."""
        attributes = dict(record.__dict__)
        attributes["msg"] = record.getMessage()
        attributes["args"] = None
        if record.exc_info:
            attributes["exc_text"] = record.exc_text or (
                self.formatter_for_exceptions.formatException(record.exc_info)
            )
        attributes["exc_info"] = None
        attributes.pop("message", None)  # set by a formatter; made again there
        if attributes.get("processName") == "MainProcess" and self.process_name:
            # What multiprocessing calls this worker once a task imports it.
            attributes["processName"] = self.process_name
        try:
            return _pickle.dumps(attributes, protocol=5)
        except Exception:
            plain = (str, int, float, bool, type(None))
            return _pickle.dumps(
                {
                    name: value if isinstance(value, plain) else repr(value)
                    for name, value in attributes.items()
                },
                protocol=5,
            )


def forward_to_parent(endpoint, level, process_name):
    """In a worker: send the records logged at `level` or above to the parent, as from
    `process_name`. The root logger lets them through (its level is lowered to `level`
    if needed)."""
    handler = ForwardingHandler(endpoint.forward_logs(), level, process_name)
    root = logging.getLogger()
    root.addHandler(handler)
    if root.level > level:
        root.setLevel(level)
    # Run at exit after the user's own exit functions (registered later): what they
    # log goes too.
    atexit.register(_finish, endpoint)


def _finish(endpoint):
    try:
        endpoint.finish_logs()
    except OSError:
        pass  # the parent is gone


# -- parent side ------------------------------------------------------------------------


def handle_worker_logs(pool):
    """Body of the parent's log thread: hand each forwarded record to the logger of its
    name until the pool has closed."""
    from ._pool_state import _log, _logger

    dropped = 0
    while (logs := pool.next_logs()) is not None:
        for log in logs.records:
            try:
                _handle(log)
            except Exception:
                _logger.exception("loky: a log record of worker %d could not be handled", log.pid)
        if logs.dropped:
            if not dropped:
                _log(
                    logging.WARNING,
                    "loky: %d log records of the workers were dropped: they came faster "
                    "than this process's logging handled them (forward_logging keeps a "
                    "bounded number waiting; later drops are logged at DEBUG)",
                    logs.dropped,
                )
            else:
                _log(
                    logging.DEBUG,
                    "loky: %d more log records of the workers dropped (%d in all)",
                    logs.dropped,
                    dropped + logs.dropped,
                )
            dropped += logs.dropped


def _handle(log):
    record = logging.makeLogRecord(_pickle.loads(log.body))
    record.process = log.pid
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
