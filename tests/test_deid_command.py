"""``mira deid`` as a user runs it: no orchestration imported, no cluster started, and the same
outputs from its local process pool as from a configured Dask scheduler."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pydicom
import pytest
import typer
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from mira.cli.root import COMMAND_MODULES, typed_command
from mira.errors import MiraError
from tasks.deid.local_run import run_in_processes
from tasks.deid.stage import INLINE_MAX_FILES

SECRET = "test-only-secret-0123456789abcdef0123"
# Small original CT and MR images (no OCR pass), enough of them for the pool, not the inline path.
TEMPLATES = ("17106", "2062", "15820", "4950")
FILES = INLINE_MAX_FILES + 10
# Orchestration, cluster, data-quality and catalog packages: none is needed to de-identify a folder.
HEAVY = ("prefect", "distributed", "dask", "great_expectations", "pyarrow", "duckdb")

# The console entry point in a fresh interpreter, then the heavy modules it loaded.
RUN_MIRA_DEID = f"""
import json, sys
HEAVY = {HEAVY!r}
from mira.cli import main
sys.argv = ["mira", "deid", *sys.argv[1:]]
try:
    main()
except SystemExit as exit_:
    code = exit_.code
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set(HEAVY))
print(json.dumps({{"code": code, "heavy": heavy}}))
"""


@pytest.fixture(scope="module")
def uploads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``FILES`` real CT and MR files, each with its own SOP Instance UID, in patient folders."""
    folder = tmp_path_factory.mktemp("uploads")
    templates = [pydicom.dcmread(str(get_testdata_file(name))) for name in TEMPLATES]
    for index in range(FILES):
        ds = templates[index % len(templates)].copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = folder / f"patient{index % 3}" / f"{index:03d}.dcm"
        target.parent.mkdir(exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
    return folder


def run_mira_deid(args: Sequence[str], **env: str) -> dict[str, object]:
    environment = {**os.environ, "MIRA_DEID_SECRET": SECRET, **env}
    environment.pop("MIRA_DASK_ADDRESS", None)
    finished = subprocess.run(
        [sys.executable, "-c", RUN_MIRA_DEID, *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    report: dict[str, object] = json.loads(finished.stdout.strip().splitlines()[-1])
    return report


def outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_mira_deid_imports_no_prefect_or_dask(uploads: Path, tmp_path: Path) -> None:
    """The command de-identifies a folder on its process pool without importing Prefect,
    Dask, distributed, Great Expectations or the catalog's pyarrow and DuckDB (each costs
    start-up time for nothing here)."""
    out, held = tmp_path / "out", tmp_path / "held"
    report = run_mira_deid([str(uploads), str(out), "--quarantine", str(held)])
    assert report == {"code": 0, "heavy": []}
    assert len(outputs(out)) == FILES
    assert not held.exists() or not any(held.rglob("*.dcm"))


def test_pool_and_dask_scheduler_publish_the_same_files(uploads: Path, tmp_path: Path) -> None:
    """With MIRA_DASK_ADDRESS the work goes to that scheduler (a real one, here in this
    process), and what it publishes equals, byte for byte, what the local pool publishes."""
    from distributed import LocalCluster

    from mira.cli import app, register_commands

    register_commands()
    from typer.testing import CliRunner

    local = tmp_path / "local"
    run_mira_deid([str(uploads), str(local), "--quarantine", str(tmp_path / "held-local")])
    with LocalCluster(
        n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        on_dask = tmp_path / "dask"
        result = CliRunner().invoke(
            app,
            ["deid", str(uploads), str(on_dask), "--quarantine", str(tmp_path / "held-dask")],
            env={"MIRA_DEID_SECRET": SECRET, "MIRA_DASK_ADDRESS": cluster.scheduler_address},
        )
        assert result.exit_code == 0, result.output
        assert "deidentify_group" in cluster.scheduler.task_prefixes
    assert outputs(local) == outputs(on_dask)
    assert len(outputs(local)) == FILES


def double_each(offset: int, group: Sequence[int]) -> list[int]:
    return [offset + 2 * value for value in group]


def die_on_three(offset: int, group: Sequence[int]) -> list[int]:
    if 3 in group:
        os._exit(9)  # what the OOM killer or a codec's segfault leaves behind
    return list(group)


def test_process_pool_keeps_order_and_reports_progress() -> None:
    groups = [list(range(start, start + 5)) for start in range(0, 40, 5)]
    seen: list[int] = []
    results = run_in_processes(double_each, 1, groups, workers=2, progress=seen.append)
    assert results == [1 + 2 * value for value in range(40)]
    assert seen == list(range(5, 45, 5))


def test_a_worker_that_dies_is_a_clear_error() -> None:
    with pytest.raises(MiraError, match="worker process died"):
        run_in_processes(die_on_three, 0, [[1, 2], [3, 4], [5, 6]], workers=2)


def test_each_command_is_found_in_the_module_the_table_names() -> None:
    """main() imports only the module of the typed command: the table must name, for every
    command in it, the module that registers it."""
    import importlib

    for command, module in COMMAND_MODULES.items():
        app = typer.Typer()
        app.callback()(lambda: None)
        importlib.import_module(f"mira.cli.{module}").register(app)
        commands = getattr(typer.main.get_command(app), "commands", {})
        assert command in commands, (command, module)


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["deid", "in", "out"], "deid"),
        (["-v", "--gateway", "s3://gw", "--dask-address", "tcp://h:8786", "deid", "x"], "deid"),
        (["--research=/r", "catalog", "query"], "catalog"),
        (["--help"], None),
        (["--version"], None),
        ([], None),
    ],
)
def test_the_typed_command_is_read_past_the_global_options(
    args: list[str], command: str | None
) -> None:
    assert typed_command(args) == command
