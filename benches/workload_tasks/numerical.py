"""Numerical: a 2-D convolution of image tiles (results returned)."""

import numpy as np
from scipy.signal import convolve2d

# A 5x5 blur kernel.
KERNEL = np.full((5, 5), 1 / 25)


def make_tiles(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.random((size, size)) for _ in range(n)]


def convolve(tile):
    return convolve2d(tile, KERNEL, mode="same", boundary="symm")


def convolve_state(worker_state, tile):
    """mpire's calling convention with use_worker_state (unused here)."""
    return convolve(tile)
