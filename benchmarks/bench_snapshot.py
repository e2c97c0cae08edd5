"""Snapshot manifests at scale: build + hash 1,000,000 entries, and diff two of them.

Run: ``.venv/bin/python -m benchmarks.bench_snapshot [--entries N]``. Prints a table and
writes ``benchmarks/results/bench_snapshot.json``. Target: each measured step under 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from tasks.dataset.manifest import manifest_bytes, top_hash
from tasks.dataset.snapshot import build_manifest
from tasks.dataset.verify import diff_manifests

T = TypeVar("T")
TARGET_SECONDS = 10.0
RESULTS = Path(__file__).parent / "results" / "bench_snapshot.json"
SPLITS = np.array(["train", "validation", "test"])


def synthetic_rows(count: int, seed: int = 0) -> pa.Table:
    """``count`` manifest-shaped rows (unsorted): DICOM keys, random SHA-256s, version ids."""
    rng = np.random.default_rng(seed)
    index = rng.permutation(count)
    patients = index // 200
    keys = [
        f"dicom/P{p:07d}/2.25.{p}/2.25.{p}.{i % 4}/{i}.dcm"
        for p, i in zip(patients.tolist(), index.tolist(), strict=True)
    ]
    digests = rng.integers(0, 256, size=(count, 32), dtype=np.uint8)
    return pa.table(
        {
            "key": keys,
            "size": rng.integers(100_000, 600_000, count),
            "sha256": [bytes(row).hex() for row in digests],
            "version_id": [f"{v:032x}" for v in rng.integers(0, 2**62, count).tolist()],
            "kind": pa.array(["instance"] * count),
            "patient_id": [f"P{p:07d}" for p in patients.tolist()],
            "split": SPLITS[rng.choice(3, count, p=[0.7, 0.15, 0.15])],
            "modality": np.where(patients % 2 == 0, "CT", "MR"),
            "qa_status": pa.array(["passed"] * count),
            "batch": [f"batch-{p // 1000:04d}" for p in patients.tolist()],
            "mira_version": pa.array(["0.1.0"] * count),
        }
    )


def changed_copy(manifest: pa.Table, fraction: float, seed: int = 1) -> pa.Table:
    """A later manifest: ``fraction`` of entries each removed, re-hashed and moved; as many added."""
    rng = np.random.default_rng(seed)
    count = manifest.num_rows
    pick = rng.random(count)
    kept = manifest.filter(pa.array(pick >= fraction))
    changed = (pick >= fraction) & (pick < 2 * fraction)
    moved = (pick >= 2 * fraction) & (pick < 3 * fraction)
    mask = pa.array(changed[pick >= fraction])
    new_hash = pc.if_else(mask, pc.utf8_reverse(kept["sha256"]), kept["sha256"])
    kept = kept.set_column(kept.schema.get_field_index("sha256"), "sha256", new_hash)
    move = pa.array(moved[pick >= fraction])
    new_split = pc.if_else(move, "test", kept["split"])
    kept = kept.set_column(kept.schema.get_field_index("split"), "split", new_split)
    added = synthetic_rows(int(count * fraction), seed=seed + 1)
    added = added.set_column(0, "key", pc.binary_join_element_wise(added["key"], ".new", ""))
    return build_manifest(pa.concat_tables([kept, added.cast(kept.schema)]))


def timed(fn: Callable[[], T], cpu: dict[str, float], step: str) -> tuple[T, float]:
    """``fn()`` and its wall seconds; its CPU seconds go to ``cpu[step]`` (the machine is shared)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    value = fn()
    cpu[step] = time.process_time() - start_cpu
    return value, time.perf_counter() - start


def run(count: int) -> dict[str, Any]:
    """Measure each step; returns the results document."""
    rows = synthetic_rows(count)
    steps: dict[str, float] = {}
    cpu: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    build, reread, diffing = (
        "build + hash manifest (sort, Parquet, Merkle root)",
        "re-read Parquet + recompute top hash (verify's manifest check)",
        "diff two manifests (full outer join)",
    )

    def build_and_hash() -> tuple[pa.Table, bytes, str]:
        manifest = build_manifest(rows)
        return manifest, manifest_bytes(manifest), top_hash(manifest)

    (manifest, data, root), steps[build] = timed(build_and_hash, cpu, build)
    _, steps[reread] = timed(lambda: top_hash(pq.read_table(pa.BufferReader(data))), cpu, reread)
    later = changed_copy(manifest, fraction=0.01)
    diff, steps[diffing] = timed(lambda: diff_manifests(manifest, later), cpu, diffing)
    return {
        "entries": count,
        "manifest_parquet_bytes": len(data),
        "top_hash": root,
        "diff": {
            "added": diff.added.num_rows,
            "removed": diff.removed.num_rows,
            "changed": diff.changed.num_rows,
            "moved": diff.moved.num_rows,
        },
        "seconds": steps,
        "cpu_seconds": cpu,
        "target_seconds": TARGET_SECONDS,
        "within_target": all(s < TARGET_SECONDS for s in steps.values()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyarrow": pa.__version__,
            "platform": platform.platform(),
            "load_average_1m": [load_before, os.getloadavg()[0]],
        },
        "measured_at": datetime.now(UTC).isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    console = Console()
    with console.status(f"building and diffing manifests of {args.entries:,} entries"):
        results = run(args.entries)
    table = Table(title=f"snapshot manifests, {results['entries']:,} entries")
    table.add_column("step")
    table.add_column("wall s", justify="right")
    table.add_column("CPU s", justify="right")
    table.add_column(f"< {TARGET_SECONDS:g} s")
    for step, seconds in results["seconds"].items():
        verdict = "yes" if seconds < TARGET_SECONDS else "[red]NO[/]"
        table.add_row(step, f"{seconds:.2f}", f"{results['cpu_seconds'][step]:.2f}", verdict)
    console.print(table)
    load = results["machine"]["load_average_1m"]
    console.print(f"{results['machine']['cpus']} CPUs, load average {load[0]:.1f} -> {load[1]:.1f}")
    console.print(f"diff found {results['diff']}; manifest {results['manifest_parquet_bytes']:,} B")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
