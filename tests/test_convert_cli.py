"""``mira convert`` as a user runs it: a real Aperio slide, both NGFF versions, a rerun skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from mira.cli.root import app, register_commands

SLIDE = Path(__file__).parent / "fixtures" / "cmu_small_region.svs"


@pytest.mark.skipif(not SLIDE.exists(), reason="run `make fixtures` (part of `make test`) first")
@pytest.mark.parametrize("ngff", ["0.5", "0.4"])
def test_convert_command(tmp_path: Path, ngff: str) -> None:
    register_commands()
    runner = CliRunner()
    output = tmp_path / "slide.ome.zarr"
    first = runner.invoke(app, ["convert", str(SLIDE), str(output), "--ngff", ngff])
    assert first.exit_code == 0, first.output
    level0 = zarr.open_group(str(output), mode="r")["0"]
    expected = tifffile.imread(SLIDE, level=0)
    assert np.array_equal(np.moveaxis(np.asarray(level0), 0, -1), expected)
    marker = output / ("zarr.json" if ngff == "0.5" else ".zattrs")
    assert json.loads(marker.read_text())
    again = runner.invoke(app, ["convert", str(SLIDE), str(output), "--ngff", ngff])
    assert again.exit_code == 0 and "already current" in again.output


def test_convert_refuses_a_bad_version(tmp_path: Path) -> None:
    register_commands()
    result = CliRunner().invoke(app, ["convert", "x.svs", str(tmp_path / "o"), "--ngff", "0.3"])
    assert result.exit_code == 2
