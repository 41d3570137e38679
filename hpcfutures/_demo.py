"""The sampling function of ``hpcfutures demo``: importable by workers, standard library only."""

from __future__ import annotations

import random


def count_inside(samples: int, seed: int) -> int:
    """Draw *samples* points in the unit square and return how many fall in the quarter circle."""
    rng = random.Random(seed)
    draw = rng.random
    inside = 0
    for _ in range(samples):
        x = draw()
        y = draw()
        if x * x + y * y <= 1.0:
            inside += 1
    return inside
