"""Fine-grained parallelism shared by the wings: the Dask cluster, and a bounded thread-pool map.

``dask_client`` is an existing scheduler or a LocalCluster (CPU-bound work); ``parallel_map`` is a
thread pool for object I/O that waits on the network or the disk.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, TypeVar

from mira.errors import MiraError

if TYPE_CHECKING:  # distributed is imported when a cluster is needed, not by every wing
    from distributed import Client

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
T = TypeVar("T")
R = TypeVar("R")
IN_FLIGHT_PER_WORKER = 4

WORKER_START_TIMEOUT = 120.0


@contextlib.contextmanager
def dask_client(
    address: str = "", workers: int = 0, threads_per_worker: int = 1, processes: bool = True
) -> Iterator[Client]:
    """Connect to ``address`` when given, else start a LocalCluster for the block's duration.

    The LocalCluster uses processes by default (the work is CPU-bound Python plus GIL-releasing
    codecs), ``workers`` of them (0: one per core), and a dashboard on a free loopback port.
    ``processes=False`` runs the workers as threads of this process instead: for work whose
    heavy parts all release the GIL, it spares starting processes and moving data between them.
    """
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    count = workers or os.cpu_count() or 1
    # Processes talk TCP on loopback; threads use the in-process transport (no host to give).
    where = {"host": "127.0.0.1"} if processes else {}
    with (
        LocalCluster(
            n_workers=count,
            threads_per_worker=threads_per_worker,
            processes=processes,
            dashboard_address="127.0.0.1:0",  # None still binds 8787; a free port clashes with nothing
            **where,
        ) as cluster,
        Client(cluster) as client,
    ):
        try:
            client.wait_for_workers(count, timeout=WORKER_START_TIMEOUT)
        except TimeoutError as err:
            raise MiraError(
                f"the Dask LocalCluster did not start {count} workers within "
                f"{WORKER_START_TIMEOUT:.0f}s; see the worker logs above"
            ) from err
        log.info(
            "started a LocalCluster with %d %s",
            count * (1 if processes else threads_per_worker),
            "worker processes" if processes else "worker threads in this process",
        )
        yield client


def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    progress: Progress | None = None,
    step: str = "",
    offset: tuple[int, int] | None = None,
) -> list[R]:
    """``fn`` over ``items`` in order on a thread pool (object I/O waits on network or disk).

    At most a few tasks per worker are in flight, so a million items never means a million
    futures. ``offset`` is (done before, grand total) when ``items`` is one batch of many.
    """
    results: list[Any] = [None] * len(items)
    done, total = offset or (0, len(items))
    queue = iter(enumerate(items))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        pending: dict[Future[R], int] = {}

        def submit(count: int) -> None:
            for index, item in itertools.islice(queue, count):
                pending[pool.submit(fn, item)] = index

        submit(IN_FLIGHT_PER_WORKER * max(1, workers))
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                results[pending.pop(future)] = future.result()
            submit(len(finished))
            done += len(finished)
            if progress is not None:
                progress(step, done, total)
    return results
