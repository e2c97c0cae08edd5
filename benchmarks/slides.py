"""The slides the WSI benchmarks use: the real Aperio slide and large generated ones, cached.

Generated slides are Aperio-like SVS with JPEG (RGB colour space, quality 80) 256 px tiles, drawn
tile by tile by ``tests.slides`` and kept under ``benchmarks/results/cache/`` (git-ignored), so
only the first run pays for them (about 30 s per GB of pixels).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tests.fetch_fixtures import fetch_slide
from tests.slides import write_slide

log = logging.getLogger(__name__)

CACHE = Path(__file__).parent / "results" / "cache"
FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def real_slide() -> Path:
    """``cmu_small_region.svs`` (a real Aperio scan), fetched like ``make fixtures`` does."""
    return fetch_slide(FIXTURES)


def generated_slide(width: int, height: int) -> Path:
    """A ``width x height`` JPEG-tiled SVS-like slide, written once and cached."""
    path = CACHE / f"generated-{width}x{height}-jpeg.svs"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    log.info("generating %s (once)", path.name)
    write_slide(
        partial, height, width, kind="svs", codec="jpeg", levels=3, maxworkers=os.cpu_count() or 1
    )
    partial.replace(path)
    return path
