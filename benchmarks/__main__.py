"""Run every benchmark in turn: ``python -m benchmarks`` (what ``make bench`` calls)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = (
    "bench_deid",
    "bench_deid_command",
    "bench_ocr",
    "bench_convert",
    "bench_convert_dicom",
    "bench_convert_vendors",
    "bench_tile_reads",
    "bench_catalog",
    "bench_snapshot",
    "bench_replicate",
    "bench_pipeline",
    "bench_audit",
)


def main() -> int:
    failures = 0
    for name in BENCHMARKS:
        if not (Path(__file__).parent / f"{name}.py").exists():
            continue
        print(f"== {name}", flush=True)
        failures += (
            subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=False).returncode
            != 0
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
