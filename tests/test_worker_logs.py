"""`forward_logging`: records logged in the workers are handled by the parent's logger of
the same name, in order per worker, without ever making a task wait."""

import atexit
import logging
import os
import threading
import time

import pytest

from loky import ProcessPoolExecutor, get_reusable_executor

import helpers

pytestmark = pytest.mark.timeout(120)

NAME = "loky_tests.worker"


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self):
        return [record.getMessage() for record in self.records]


@pytest.fixture
def captured():
    """What the parent's logger NAME handles (at every level)."""
    logger = logging.getLogger(NAME)
    handler = Capture()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


@pytest.fixture
def loky_records():
    """What the "loky" logger says, at every level."""
    logger = logging.getLogger("loky")
    handler = Capture()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


# -- tasks ------------------------------------------------------------------------------


def log_at_each_level():
    logger = logging.getLogger(NAME)
    logger.debug("debug")
    logger.info("info %s", "with an argument")
    logger.warning("warning")
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("error with a traceback")
    return os.getpid()


def log_from_a_thread_of_the_task():
    thread = threading.Thread(
        target=lambda: logging.getLogger(NAME).warning("from a thread"), name="helper"
    )
    thread.start()
    thread.join()
    return os.getpid()


def log_numbered(count):
    logger = logging.getLogger(NAME)
    for i in range(count):
        logger.warning("record %d", i)
    return os.getpid()


def log_later_from_a_thread(seconds):
    """Returns at once; a thread of the worker logs `seconds` later, while the worker
    waits for its next task."""

    def later():
        time.sleep(seconds)
        logging.getLogger(NAME).warning("after the task returned")

    threading.Thread(target=later, daemon=True).start()
    return os.getpid()


def log_at_exit():
    atexit.register(lambda: logging.getLogger(NAME).warning("at the worker's exit"))
    return os.getpid()


def log_with_an_unpicklable_extra():
    logging.getLogger(NAME).warning("with a lock", extra={"lock": threading.Lock()})


def log_in_the_initializer():
    logging.getLogger(NAME).warning("from the initializer")


# -- tests ------------------------------------------------------------------------------


def test_records_at_or_above_the_level_reach_the_parents_logger(captured):
    executor = ProcessPoolExecutor(max_workers=1, forward_logging=logging.INFO)
    pid = executor.submit(log_at_each_level).result(timeout=60)
    executor.shutdown(wait=True)  # returns once the records sent are handled
    assert captured.messages() == ["info with an argument", "warning", "error with a traceback"]
    assert all(record.process == pid for record in captured.records)
    assert {record.processName for record in captured.records} == {f"LokyProcess-{pid}"}
    error = captured.records[-1]
    assert error.levelno == logging.ERROR and error.name == NAME
    assert "ZeroDivisionError: division by zero" in error.exc_text
    assert "log_at_each_level" in error.exc_text
    assert error.funcName == "log_at_each_level"


def test_a_level_name_is_taken_and_the_parents_level_decides_too(captured):
    executor = ProcessPoolExecutor(max_workers=1, forward_logging="DEBUG")
    logging.getLogger(NAME).setLevel(logging.WARNING)  # as for a call made here
    executor.submit(log_at_each_level).result(timeout=60)
    executor.shutdown(wait=True)
    assert captured.messages() == ["warning", "error with a traceback"]


def test_records_of_other_threads_of_a_task_and_of_an_idle_worker_come_too(captured):
    executor = ProcessPoolExecutor(max_workers=1, forward_logging=logging.WARNING)
    pid = executor.submit(log_from_a_thread_of_the_task).result(timeout=60)
    assert executor.submit(log_later_from_a_thread, 0.05).result(timeout=60) == pid
    # The worker now waits for a task; its record comes without one.
    assert helpers.wait_until(lambda: len(captured.records) == 2, timeout=30)
    assert captured.messages() == ["from a thread", "after the task returned"]
    assert captured.records[0].threadName == "helper"
    executor.shutdown(wait=True)


def test_records_come_in_the_order_each_worker_logged_them(captured):
    executor = ProcessPoolExecutor(max_workers=2, forward_logging=logging.WARNING)
    pids = set()
    for future in [executor.submit(log_numbered, 300) for _ in range(4)]:
        pids.add(future.result(timeout=60))
    executor.shutdown(wait=True)
    assert len(captured.records) == 4 * 300
    for pid in pids:
        numbers = [int(r.getMessage().split()[1]) for r in captured.records if r.process == pid]
        assert len(numbers) % 300 == 0
        assert numbers == list(range(300)) * (len(numbers) // 300)


def test_what_the_initializer_and_exit_functions_log_is_forwarded(captured):
    executor = ProcessPoolExecutor(
        max_workers=1, forward_logging=logging.WARNING, initializer=log_in_the_initializer
    )
    executor.submit(log_at_exit).result(timeout=60)
    executor.shutdown(wait=True)
    assert captured.messages() == ["from the initializer", "at the worker's exit"]


def test_an_unpicklable_extra_travels_as_its_repr(captured):
    executor = ProcessPoolExecutor(max_workers=1, forward_logging=logging.WARNING)
    executor.submit(log_with_an_unpicklable_extra).result(timeout=60)
    executor.shutdown(wait=True)
    (record,) = captured.records
    assert record.getMessage() == "with a lock"
    assert isinstance(record.lock, str) and "lock" in record.lock


def test_without_the_option_records_stay_in_the_worker(captured, executor_factory):
    executor = executor_factory(max_workers=1)
    executor.submit(log_at_each_level).result(timeout=60)
    executor.shutdown(wait=True)
    assert captured.records == []


def test_a_slow_parent_never_makes_a_task_wait_and_drops_are_counted_once(
    captured, loky_records
):
    # The parent's handler blocks until released: records pile up, then are dropped.
    release = threading.Event()
    keep = captured.emit

    def slow_emit(record):
        release.wait(60)
        keep(record)

    captured.emit = slow_emit
    executor = ProcessPoolExecutor(max_workers=1, forward_logging=logging.WARNING)
    total = 20_000
    try:
        # The task logs every record and returns while the parent handles none.
        executor.submit(log_numbered, total).result(timeout=60)
        assert not captured.records
    finally:
        release.set()
    executor.shutdown(wait=True)  # the records kept are handled by then
    drops = [r for r in loky_records.records if "log records of the workers" in r.getMessage()]
    assert drops, "the drops are reported"
    first, later = drops[0], drops[1:]
    assert first.levelno == logging.WARNING and "were dropped" in first.getMessage()
    assert all(r.levelno == logging.DEBUG for r in later), "said once"
    dropped = sum(r.args[0] for r in drops)
    handled = [int(message.split()[1]) for message in captured.messages()]
    assert dropped > 0 and len(handled) + dropped == total, "every record accounted for"
    # Those kept are in order, the first ones first.
    assert handled[:2] == [0, 1] and handled == sorted(handled)


def test_reusable_executor_forwards_too(captured):
    executor = get_reusable_executor(max_workers=1, forward_logging=logging.WARNING)
    executor.submit(log_numbered, 3).result(timeout=60)
    executor.shutdown(wait=True)
    assert captured.messages() == ["record 0", "record 1", "record 2"]


def test_records_of_the_last_tasks_are_handled_when_the_script_ends(tmp_path):
    # Nobody waits for the task nor shuts the executor down; nothing configures logging:
    # the records reach the parent's last-resort handler (stderr) before it exits. Fewer
    # records than a worker's queue holds (1,000): however slowly its channel takes
    # them, none is dropped (a drop is logged on the "loky" logger, silent here).
    code = """
        import logging
        from loky import ProcessPoolExecutor
        import test_worker_logs
        executor = ProcessPoolExecutor(max_workers=1, forward_logging=logging.WARNING)
        executor.submit(test_worker_logs.log_numbered, 900)
    """
    out = helpers.run_script(tmp_path, code, env={"PYTHONPATH": os.path.dirname(__file__)})
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [f"record {i}" for i in range(900)]


def test_workers_forked_from_the_template_forward_too(captured):
    executor = ProcessPoolExecutor(
        max_workers=1, max_tasks_per_child=1, forward_logging=logging.WARNING
    )
    pids = [executor.submit(log_numbered, 2).result(timeout=60) for _ in range(3)]
    executor.shutdown(wait=True)
    assert len(set(pids)) == 3, "a new worker for each task"
    assert [(r.process, r.getMessage()) for r in captured.records] == [
        (pid, f"record {i}") for pid in pids for i in range(2)
    ]
