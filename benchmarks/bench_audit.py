"""What the security features cost: an audit record per command, and server-side encryption.

Run: ``.venv/bin/python -m benchmarks.bench_audit [--objects N]``. Starts a throwaway SeaweedFS
server (a bucket with Object Lock), then times, on a local folder and on S3:
- appending one audit record to a log that already holds 0, N/10 and N objects (the writer
  lists ``audit/``, hashes the last object and makes a conditional PUT);
- ``verify_log`` over N objects;
- writing 64 MiB in 8 MiB objects with SSE-S3 (mira's default) and without.
Prints a table and writes ``benchmarks/results/bench_audit.json``. Target: an append under
100 ms on a log of 1,000 objects (so a command's record costs less than its start-up).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mira.audit import append_records, verify_log
from storage import Store, open_store
from tests.seaweedfs import SeaweedServer

TARGET_MS = 100.0
RESULTS = Path(__file__).parent / "results" / "bench_audit.json"
BUCKET = "mira-bench-audit"
RUNS = 5
RECORD = {"operation": "bench", "stores": [{"store": "research", "objects": 1, "bytes": 1}]}


def timed(call: Callable[[], Any], runs: int = RUNS) -> float:
    """The median wall time of ``call`` in milliseconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def fill(store: Store, count: int) -> None:
    """Grow the log to ``count`` objects."""
    while True:
        done = append_records(store, [RECORD], retention_days=1)
        if done.seq >= count:
            return


def audit_rows(name: str, store: Store, objects: int) -> list[dict[str, Any]]:
    rows = []
    for size in (0, objects // 10, objects):
        if size:
            fill(store, size)
        rows.append(
            {
                "store": name,
                "what": f"append to a log of {size} objects",
                "ms": timed(lambda: append_records(store, [RECORD], retention_days=1)),
            }
        )
    check = verify_log(store)
    assert check.intact, check.problems[:3]
    rows.append(
        {
            "store": name,
            "what": f"verify {check.objects} objects",
            "ms": timed(lambda: verify_log(store), 1),
        }
    )
    return rows


def sse_rows(server: SeaweedServer) -> list[dict[str, Any]]:
    body = os.urandom(8 * 1024 * 1024)
    rows = []
    for label, sse in (("SSE-S3 (default)", "AES256"), ("no SSE", None)):
        config = dataclasses.replace(server.config, sse=sse)
        store = open_store(f"s3://{BUCKET}/sse-{uuid.uuid4().hex[:8]}", config)

        def write(store: Store = store) -> None:
            for n in range(8):
                store.write_bytes(f"o{n}.bin", body)

        ms = timed(write, 3)
        rows.append(
            {"store": "s3", "what": f"write 64 MiB, {label}", "ms": ms, "MiB/s": 64 / (ms / 1000)}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mira-bench-audit-") as folder:
        rows += audit_rows("local", open_store(Path(folder) / "local"), args.objects)
        with SeaweedServer(Path(folder) / "seaweedfs") as server:
            server.create_bucket(BUCKET, object_lock=True)
            s3 = open_store(f"s3://{BUCKET}/log", server.config)
            rows += audit_rows("s3", s3, args.objects)
            rows += sse_rows(server)
    table = Table(title=f"audit and encryption ({args.objects} log objects)")
    for column in ("store", "what", "ms", "MiB/s"):
        table.add_column(column)
    for row in rows:
        rate = f"{row['MiB/s']:.0f}" if "MiB/s" in row else ""
        table.add_row(row["store"], row["what"], f"{row['ms']:.1f}", rate)
    Console().print(table)
    appends = [r["ms"] for r in rows if r["what"] == f"append to a log of {args.objects} objects"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "when": datetime.now(UTC).isoformat(),
                "machine": platform.platform(),
                "cpus": os.cpu_count(),
                "objects": args.objects,
                "target_ms": TARGET_MS,
                "rows": rows,
                "met": all(ms < TARGET_MS for ms in appends),
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
