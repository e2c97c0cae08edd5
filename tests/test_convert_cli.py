"""``mira convert`` as a user runs it: a real Aperio slide, both NGFF versions, a rerun skipped."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from typer.testing import CliRunner

from mira.cli.root import app, register_commands
from storage import open_store
from storage.errors import RETRY_ATTEMPTS
from tests.seaweedfs import SeaweedServer, free_port

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


def s3_environment(
    endpoint_url: str | None, access: str = "a", secret: str = "b"
) -> dict[str, str]:
    return {
        "MIRA_S3_ENDPOINT_URL": endpoint_url or "",
        "MIRA_S3_ACCESS_KEY_ID": access,
        "MIRA_S3_SECRET_ACCESS_KEY": secret,
        "MIRA_S3_REGION": "us-east-1",
    }


@pytest.mark.s3
@pytest.mark.skipif(not SLIDE.exists(), reason="run `make fixtures` (part of `make test`) first")
def test_convert_between_s3_urls(s3_server: SeaweedServer) -> None:
    config = s3_server.config
    root = f"s3://mira-plain/t-{uuid.uuid4().hex[:12]}"
    store = open_store(root, config)
    store.write_bytes("slides/cmu.svs", SLIDE.read_bytes())
    register_commands()
    env = s3_environment(
        config.endpoint_url, config.access_key_id or "", config.secret_access_key or ""
    )
    result = CliRunner().invoke(
        app, ["convert", f"{root}/slides/cmu.svs", f"{root}/out/cmu.ome.zarr"], env=env
    )
    assert result.exit_code == 0, result.output
    assert store.read_json("out/cmu.ome.zarr/zarr.json")["attributes"]["mira"]


def test_an_unreachable_s3_store_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """The real console script against an S3 endpoint nobody answers: one error line (after the
    retry warnings), exit 1."""
    mira = Path(sys.executable).with_name("mira")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        **s3_environment(f"http://127.0.0.1:{free_port()}"),
    }
    result = subprocess.run(
        [str(mira), "convert", "s3://bucket/slides/a.svs", str(tmp_path / "a.ome.zarr")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "transient storage error" in errors[0], result.stderr
    retries = [line for line in result.stderr.splitlines() if "retrying in" in line]
    assert len(retries) == RETRY_ATTEMPTS - 1, "one layer retries a request, no more"
