"""Orchestration overhead: the Prefect pipeline beside the same stage functions in a plain loop.

Run: ``.venv/bin/python -m benchmarks.bench_pipeline [--patients 72]``. The corpus is the sample
data's radiology batch (28 small DICOM files per patient: 72 patients make 2,016 files). Both
runs start from empty stores and use the same Dask settings; the Prefect run goes through a
Prefect server that is started (and warmed with one trivial flow) before the clock starts, as
on a deployment. Target: orchestration overhead under 15%. Writes
benchmarks/results/bench_pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).parent / "results"
BATCH = "batch-0001-radiology"
SECRET = "benchmark-only-secret-0123456789abcdef"


def prepare(root: Path, patients: int) -> Path:
    """A drop zone holding only the radiology batch."""
    from tasks.sample.generate import generate_sample_data

    sample = root / "sample"
    generate_sample_data(sample, patients=patients, slides=0)
    dropzone = root / "dropzone"
    dropzone.mkdir()
    shutil.copytree(sample / BATCH, dropzone / BATCH)
    return dropzone


def fresh_stores(root: Path, name: str, dropzone: Path) -> tuple[str, str]:
    gateway, research = root / name / "gateway", root / name / "research"
    gateway.mkdir(parents=True)
    shutil.copytree(dropzone, gateway / "dropzone")
    return str(gateway), str(research)


def plain_loop(gateway_url: str, research_url: str) -> None:
    """The stage functions the flows call, called directly, in the pipeline's order."""
    from storage import open_store
    from tasks.dataset.snapshot import create_snapshot
    from tasks.dataset.split import split_dataset
    from tasks.deid import DeidPolicy
    from tasks.deid.stage import deidentify_batch
    from tasks.ingest.stage import ingest_batch
    from tasks.quality.stage import assess_batch
    from tasks.wsi.convert import ConvertOptions, convert_pending_slides

    gateway, research = open_store(gateway_url), open_store(research_url)
    ingest_batch(gateway, BATCH)
    deidentify_batch(gateway, research, BATCH, SECRET.encode(), DeidPolicy.default())
    convert_pending_slides(research, ConvertOptions())
    assess_batch(research, BATCH)
    split_dataset(research)
    create_snapshot(research, f"after-{BATCH}")


def prefect_pipeline(gateway_url: str, research_url: str) -> None:
    from flows.params import StoreParams
    from flows.pipeline import pipeline

    pipeline(BATCH, StoreParams(gateway_url=gateway_url, research_url=research_url))


def timed(run: Callable[[str, str], None], stores: tuple[str, str]) -> float:
    started = time.perf_counter()
    run(*stores)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patients", type=int, default=72)
    args = parser.parse_args()
    os.environ["MIRA_DEID_SECRET"] = SECRET
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    @flow
    def warm_up() -> int:
        return 1

    with (
        tempfile.TemporaryDirectory(prefix="mira-bench-pipeline-") as tmp,
        prefect_test_harness(server_startup_timeout=120),
    ):
        root = Path(tmp)
        dropzone = prepare(root, args.patients)
        files = sum(1 for p in dropzone.rglob("*.dcm"))
        warm_up()
        loop = timed(plain_loop, fresh_stores(root, "loop", dropzone))
        orchestrated = timed(prefect_pipeline, fresh_stores(root, "prefect", dropzone))
    overhead = orchestrated / loop - 1
    report = {
        "files": files,
        "plain_loop_seconds": loop,
        "prefect_pipeline_seconds": orchestrated,
        "overhead": overhead,
        "target_overhead": 0.15,
    }
    table = Table(title=f"pipeline on {files} DICOM files")
    table.add_column("run")
    table.add_column("seconds", justify="right")
    table.add_column("files/s", justify="right")
    for name, seconds in (
        ("stage functions, plain loop", loop),
        ("Prefect pipeline", orchestrated),
    ):
        table.add_row(name, f"{seconds:.1f}", f"{files / seconds:.0f}")
    console = Console()
    console.print(table)
    console.print(f"orchestration overhead: {overhead:+.1%} (target < 15%)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_pipeline.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
