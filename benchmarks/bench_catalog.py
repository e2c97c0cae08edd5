"""The catalog against S3 LIST: the same 100,000 objects, found by SQL or by listing the bucket.

Run: ``.venv/bin/python -m benchmarks.bench_catalog [--objects N] [--threads T]``. Starts a
throwaway SeaweedFS S3 server, writes N small objects and their N catalog rows (Parquet parts),
then times catalog queries (``tasks.dataset.catalog.query``: parts read from the store + DuckDB) and a
full S3 LIST of the objects. Prints a table and writes ``benchmarks/results/bench_catalog.json``.
Target: every catalog query under 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from storage import Store, open_store
from tasks.dataset import catalog
from tests.seaweedfs import SeaweedServer

TARGET_MS = 100.0
RESULTS = Path(__file__).parent / "results" / "bench_catalog.json"
BUCKET = "mira-bench"
PARTS = 10
QUERY_RUNS = 7
LIST_RUNS = 3
LIST_ALL = "list every key (what LIST returns)"


def queries(keys: list[str]) -> dict[str, str]:
    """The timed SQL; the patient and series are taken from the middle of the key range."""
    _, patient, study, series, _ = keys[len(keys) // 2].split("/")
    return {
        "count by modality": "SELECT modality, count(*) AS n FROM instances GROUP BY 1 ORDER BY 1",
        "one patient's instances": f"SELECT key, bytes FROM instances WHERE patient_id = '{patient}'",
        "one series by key prefix": (
            f"SELECT key FROM instances WHERE key LIKE 'dicom/{patient}/{study}/{series}/%'"
        ),
        LIST_ALL: "SELECT key, bytes FROM instances ORDER BY key",
    }


def object_keys(count: int) -> list[str]:
    """DICOM-shaped keys: 100 instances per series, 2 series per study, 1 study per patient."""
    return [
        f"dicom/P{i // 200:05d}/2.25.{i // 200}/2.25.{i // 200}.{i // 100 % 2}/{i:07d}.dcm"
        for i in range(count)
    ]


def catalog_rows(keys: list[str], seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    count = len(keys)
    patients = [key.split("/")[1] for key in keys]
    return pa.table(
        {
            "batch": [f"batch-{i * PARTS // count:02d}" for i in range(count)],
            "key": keys,
            "bytes": rng.integers(100_000, 600_000, count),
            "sha256": [f"{v:064x}" for v in rng.integers(0, 2**62, count).tolist()],
            "patient_id": patients,
            "study_uid": [key.split("/")[2] for key in keys],
            "series_uid": [key.split("/")[3] for key in keys],
            "sop_instance_uid": [f"2.25.9{i}" for i in range(count)],
            "modality": np.array(["CT", "MR", "US", "CR"])[rng.integers(0, 4, count)],
            "rows": np.full(count, 512, dtype=np.int32),
            "columns": np.full(count, 512, dtype=np.int32),
            "patient_identity_removed": pa.array(["YES"] * count),
        }
    )


def write_catalog(store: Store, rows: pa.Table) -> None:
    """One part per batch, as the de-identification stage writes them."""
    size = rows.num_rows // PARTS
    for part in range(PARTS):
        chunk = rows.slice(part * size, size if part < PARTS - 1 else None)
        catalog.write_part(store, "instances", f"batch-{part:02d}", chunk)


def write_objects(store: Store, keys: list[str], threads: int) -> float:
    """PUT every key (64 bytes each) in parallel; returns the seconds taken."""
    payload = b"\0" * 64
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda key: store.write_bytes(key, payload), keys, chunksize=256):
            pass
    return time.perf_counter() - start


def median_ms(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Median wall milliseconds of ``runs`` calls (after one warm-up) and the last value."""
    value = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        value = fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), value


def time_queries(store: Store, sqls: dict[str, str], expected: int) -> dict[str, dict[str, Any]]:
    timings = {}
    for name, sql in sqls.items():
        ms, result = median_ms(partial(catalog.query, store, sql), QUERY_RUNS)
        timings[name] = {"ms": ms, "rows": result.num_rows}
    assert timings[LIST_ALL]["rows"] == expected
    return timings


def in_memory(connection: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    return connection.sql(sql).to_arrow_table()


def time_duckdb_only(rows: pa.Table, sqls: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The same SQL on an already registered table: DuckDB's own share of the time."""
    connection = duckdb.connect()
    connection.register("instances", rows)
    timings = {}
    for name, sql in sqls.items():
        ms, result = median_ms(partial(in_memory, connection, sql), QUERY_RUNS)
        timings[name] = {"ms": ms, "rows": result.num_rows}
    return timings


def run(count: int, threads: int, workdir: Path) -> dict[str, Any]:
    keys = object_keys(count)
    rows = catalog_rows(keys)
    sqls = queries(keys)
    local = open_store(workdir / "local-research")
    write_catalog(local, rows)
    load_before = os.getloadavg()[0]
    with SeaweedServer(workdir / "seaweedfs") as server:
        server.create_bucket(BUCKET)
        s3 = open_store(f"s3://{BUCKET}/research", server.config)
        write_catalog(s3, rows)
        put_seconds = write_objects(s3, keys, threads)
        list_ms, listed = median_ms(lambda: sum(1 for _ in s3.list("dicom/")), LIST_RUNS)
        assert listed == count, f"LIST returned {listed} of {count} objects"
        s3_queries = time_queries(s3, sqls, count)
    local_queries = time_queries(local, sqls, count)
    return {
        "objects": count,
        "catalog_rows": rows.num_rows,
        "catalog_parts": PARTS,
        "put_seconds": put_seconds,
        "put_threads": threads,
        "s3_list_ms": list_ms,
        "s3_list_objects_per_second": count / (list_ms / 1000),
        "catalog_query_ms": {
            "catalog on S3 (a LIST per table, parts cached by ETag)": s3_queries,
            "catalog on local disk": local_queries,
            "DuckDB only (table in memory)": time_duckdb_only(rows, sqls),
        },
        "target_ms": TARGET_MS,
        "within_target": all(q["ms"] < TARGET_MS for q in s3_queries.values())
        and all(q["ms"] < TARGET_MS for q in local_queries.values()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "duckdb": duckdb.__version__,
            "pyarrow": pa.__version__,
            "platform": platform.platform(),
            "load_average_1m": [load_before, os.getloadavg()[0]],
        },
        "measured_at": datetime.now(UTC).isoformat(),
    }


def report(console: Console, results: dict[str, Any]) -> None:
    table = Table(title=f"catalog vs S3 LIST, {results['objects']:,} objects")
    table.add_column("where")
    table.add_column("query")
    table.add_column("rows", justify="right")
    table.add_column("ms", justify="right")
    table.add_column(f"< {TARGET_MS:g} ms")
    for where, timings in results["catalog_query_ms"].items():
        for name, timing in timings.items():
            verdict = "yes" if timing["ms"] < TARGET_MS else "[red]NO[/]"
            table.add_row(where, name, str(timing["rows"]), f"{timing['ms']:.1f}", verdict)
    table.add_row(
        "S3 LIST (SeaweedFS)",
        "list every key",
        f"{results['objects']}",
        f"{results['s3_list_ms']:.0f}",
        "-",
    )
    console.print(table)
    load = results["machine"]["load_average_1m"]
    console.print(
        f"S3 LIST: {results['s3_list_ms'] / 1000:.2f} s for {results['objects']:,} objects; "
        f"writing them took {results['put_seconds']:.0f} s with {results['put_threads']} threads. "
        f"{results['machine']['cpus']} CPUs, load average {load[0]:.1f} -> {load[1]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()
    console = Console()
    with (
        tempfile.TemporaryDirectory(prefix="mira-bench-catalog-") as workdir,
        console.status(f"writing {args.objects:,} objects to SeaweedFS and timing queries"),
    ):
        results = run(args.objects, args.threads, Path(workdir))
    report(console, results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
