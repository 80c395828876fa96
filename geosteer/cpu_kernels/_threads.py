"""Split a batch of rows across threads for compiled loops that release the GIL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

Result = TypeVar("Result")


def run_in_row_chunks(kernel: Callable[[int, int], Result], num_rows: int, threads: int) -> list[Result]:
    """Call `kernel(start, stop)` over `[0, num_rows)` in up to `threads` contiguous chunks.

    Returns:
        The kernel's results, in row order (one chunk when `threads <= 1`).
    """
    chunks = max(1, min(threads, num_rows))
    if chunks == 1:
        return [kernel(0, num_rows)]
    bounds = [num_rows * t // chunks for t in range(chunks + 1)]
    with ThreadPoolExecutor(chunks) as pool:
        return list(pool.map(lambda t: kernel(bounds[t], bounds[t + 1]), range(chunks)))
