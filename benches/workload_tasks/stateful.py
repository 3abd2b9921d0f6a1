"""Stateful: prefix counts over generated documents. Each worker builds its prefix
index once (an initializer, or mpire's worker state) and keeps it for every task."""

import random
import string
from collections import Counter

# Per-worker state for pools with an initializer: set once per worker.
_INDEX = None


def make_documents(n_docs, words_per_doc, seed=0):
    rng = random.Random(seed)
    vocabulary = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 10)))
        for _ in range(20_000)
    ]
    return [" ".join(rng.choices(vocabulary, k=words_per_doc)) for _ in range(n_docs)]


def build_index(seed=1):
    """The state: 6,000 prefixes of 2 to 4 letters, each mapped to its id."""
    rng = random.Random(seed)
    prefixes = set()
    while len(prefixes) < 6_000:
        prefixes.add("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 4))))
    return {prefix: i for i, prefix in enumerate(sorted(prefixes))}


def count_prefixes_with(index, document):
    counts = Counter()
    for word in document.split():
        for length in (2, 3, 4):
            prefix = word[:length]
            if len(prefix) == length and prefix in index:
                counts[prefix] += 1
    return counts


def init_worker():
    global _INDEX
    _INDEX = build_index()


def count_prefixes(document):
    return count_prefixes_with(_INDEX, document)


def mpire_init(worker_state):
    worker_state["index"] = build_index()


def mpire_count_prefixes(worker_state, document):
    return count_prefixes_with(worker_state["index"], document)
