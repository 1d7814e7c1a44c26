"""Wall-clock timing shared by the benchmark scripts: warm-up runs, then one time per repeat."""
from __future__ import annotations

import statistics
import time


def timed(fn, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    return statistics.median(timed(fn, warmup, repeats))
