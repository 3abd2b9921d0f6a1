"""Expensive initialization: each worker builds a large table once (about 200 MB),
then answers many small lookups from it."""

import numpy as np

TABLE_LEN = 25_000_000  # float64: 200 MB
LOOKUP = 64  # entries read per task

_TABLE = None  # per-worker state for pools with an initializer


def build_table():
    return np.random.default_rng(0).random(TABLE_LEN)


def lookup_in(table, key):
    idx = (key * 7919 + np.arange(LOOKUP) * 104_729) % TABLE_LEN
    return float(table[idx].sum())


def init_worker():
    global _TABLE
    _TABLE = build_table()


def set_table(table):
    """Initializer for the variant where the parent builds the table."""
    global _TABLE
    _TABLE = table


def lookup(key):
    return lookup_in(_TABLE, key)


def mpire_init(worker_state):
    worker_state["table"] = build_table()


def mpire_lookup(worker_state, key):
    return lookup_in(worker_state["table"], key)


def mpire_lookup_shared(table, key):
    """mpire with shared_objects: the parent's table, copy-on-write with fork."""
    return lookup_in(table, key)


def expected(keys):
    """The answers, computed here for checking."""
    table = build_table()
    return [lookup_in(table, key) for key in keys]
