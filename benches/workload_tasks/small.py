"""Small tasks (recycling) and a stuck one (shutdown). Standard library only."""

import os
import time


def square(x):
    return x * x


def square_pid(x):
    """mpire's map passes each item; returns the pid too, to count the workers."""
    return x * x, os.getpid()


def stuck(seconds=60):
    time.sleep(seconds)
    return os.getpid()


def getpid(_=None):
    return os.getpid()
