"""``mira run BATCH`` end to end on sample data: every stage, the summary, a rerun that adds nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mira.audit import log_objects
from mira.cli.root import app, register_commands
from storage import Store, open_store
from tasks.dataset import catalog, list_snapshots
from tasks.sample.generate import generate_sample_data

pytest_plugins = ["tests.prefect_fixtures"]

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def audit_records(store: Store) -> list[dict[str, Any]]:
    """The research store's audit records (mira.audit), oldest first."""
    return [
        json.loads(line)
        for _, key in log_objects(store)
        for line in store.read_bytes(key).decode().splitlines()
    ]


def test_mira_run_goes_through_every_stage(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mira.cli.common import out

    monkeypatch.setattr(out, "width", 250)
    register_commands()
    gateway, research = tmp_path / "gateway", tmp_path / "research"
    generate_sample_data(gateway / "dropzone", patients=1, slides=1, slide_size=1024)
    monkeypatch.setenv("MIRA_DEID_SECRET", "pipeline-cli-test-secret-0123456789")
    for name in ("MIRA_GATEWAY_URL", "MIRA_RESEARCH_URL"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    flags = ["--gateway", str(gateway), "--research", str(research)]
    for batch in ("batch-0001-radiology", "batch-0002-pathology"):
        result = runner.invoke(app, [*flags, "run", batch])
        assert result.exit_code == 0, result.output
        assert "pipeline summary" in result.output and f"after-{batch}" in result.output
    store = open_store(research)
    assert catalog.read_table(store, "instances").num_rows == 28
    # The demo's slide is linked to its patient: one split unit, with the CT and MR.
    patients = set(catalog.read_table(store, "instances").column("patient_id").to_pylist())
    assert set(catalog.read_table(store, "slides").column("patient_id").to_pylist()) == patients
    assert set(catalog.read_table(store, "splits").column("patient_id").to_pylist()) == patients
    assert [o.key for o in store.list("pyramids") if o.key.endswith("/zarr.json")][:1]
    assert {s.name for s in list_snapshots(store) if s.complete} == {
        "after-batch-0001-radiology",
        "after-batch-0002-pathology",
    }
    before = [(o.key, o.etag) for o in store.list() if not o.key.startswith("audit/")]
    assert [r["operation"] for r in audit_records(store)] == ["run", "run"]
    again = runner.invoke(app, [*flags, "run", "batch-0001-radiology"])
    assert again.exit_code == 0, again.output
    # A rerun adds and rewrites nothing but its own audit record.
    assert [(o.key, o.etag) for o in store.list() if not o.key.startswith("audit/")] == before
    assert [r["operation"] for r in audit_records(store)] == ["run", "run", "run"]
    assert "none (1 already converted)" in again.output, again.output
    split_row = next(line for line in again.output.splitlines() if "split sizes" in line)
    assert "train" in split_row or "validation" in split_row or "test" in split_row
    missing = runner.invoke(app, [*flags, "run", "batch-0004-uploading"])
    assert missing.exit_code == 1
