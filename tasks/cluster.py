"""The Dask cluster that fine-grained work runs on: an existing scheduler, or a LocalCluster."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from distributed import Client, LocalCluster

from mira.errors import MiraError

log = logging.getLogger(__name__)
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
