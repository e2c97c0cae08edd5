"""``mira deid`` on the machine it is typed on: groups of files on a pool of forked processes.

A Dask LocalCluster costs the command about a second to start and stop, plus the import of
distributed, for work that needs no scheduler: the files of a folder are independent, small and
CPU-bound. Worker processes forked from the command share the modules it has already imported,
so they start in milliseconds. A configured Dask address still sends the work to that cluster
(``tasks.deid.stage.run_groups``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from mira.errors import MiraError

J = TypeVar("J")
W = TypeVar("W")
R = TypeVar("R")


def run_in_processes(
    fn: Callable[[J, Sequence[W]], list[R]],
    job: J,
    groups: Sequence[Sequence[W]],
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[R]:
    """``fn(job, group)`` for every group on ``workers`` processes (0: one per core), the
    results concatenated in the order of ``groups``; ``progress`` gets the count done so far."""
    count = max(1, min(workers or os.cpu_count() or 1, len(groups)))
    results: list[R] = []
    try:
        with ProcessPoolExecutor(max_workers=count, mp_context=_start_method()) as pool:
            for part in pool.map(fn, [job] * len(groups), groups):
                results += part
                if progress is not None:
                    progress(len(results))
    except BrokenProcessPool as err:
        raise MiraError(
            "a worker process died while de-identifying (out of memory, or a crash in an image "
            "codec); nothing was published: rerun with fewer workers (MIRA_DASK_WORKERS)"
        ) from err
    return results


def _start_method() -> multiprocessing.context.BaseContext:
    """Fork where the platform has it: workers begin with the command's imports in place (the
    parent's other threads only draw the progress bar, which the workers never touch)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")
