"""``mira ls``, ``mira catalog query`` and ``mira qa``: answers come from the catalog."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import typer
from typer.testing import CliRunner

from mira.cli import catalog as catalog_commands
from mira.cli import qa as qa_commands
from mira.cli import review as review_commands
from mira.cli.root import common
from mira.errors import InvalidInput
from storage import Store, open_store
from storage.local import LocalStore
from tasks.dataset import catalog
from tasks.quality.stage import assess_batch
from tests.test_quality_data import (
    bundled,
    instance_row,
    original_files,
    slide_row,
    write_dicom_batch,
)

pytest_plugins = ["tests.prefect_fixtures"]
runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from mira.cli.common import out

    monkeypatch.setattr(out, "width", 250)


def cli() -> typer.Typer:
    app = typer.Typer()
    app.callback()(common)
    for commands in (catalog_commands, qa_commands, review_commands):
        commands.register(app)
    return app


@pytest.fixture
def research(tmp_path: Path) -> Path:
    """A catalog of two batches: three patients, CT and MR, one slide (rows only)."""
    store = open_store(tmp_path / "research")
    ct, mr = bundled("CT_small.dcm"), bundled("MR_small.dcm")
    for batch, patients in (("b1", ("p1", "p2")), ("b2", ("p3",))):
        rows = []
        for n, patient in enumerate(patients):
            for i, ds in enumerate((ct, ct, mr)):
                key = f"dicom/{patient}/st-{patient}/se-{patient}-{i // 2}/{i}.dcm"
                rows.append(
                    instance_row(
                        batch,
                        key,
                        ds,
                        10 * n + i,
                        patient_id=patient,
                        study_uid=f"st-{patient}",
                        series_uid=f"se-{patient}-{i // 2}",
                        sop_instance_uid=f"{batch}.{patient}.{i}",
                    )
                )
        table = pa.Table.from_pylist(rows, schema=catalog.INSTANCE_SCHEMA)
        catalog.write_part(store, "instances", batch, table)
    slides = [slide_row("b2", "slides/s1.tiff", 0, patient_id="p3")]
    catalog.write_part(
        store, "slides", "b2", pa.Table.from_pylist(slides, schema=catalog.SLIDE_SCHEMA)
    )
    return tmp_path / "research"


def mira(research: Path, *args: str) -> Any:
    return runner.invoke(cli(), ["--research", str(research), *args])


def as_json(result: Any) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output))


def test_ls_levels_and_filters(research: Path) -> None:
    patients = as_json(mira(research, "ls", "--json"))
    assert [(r["patient_id"], r["studies"], r["series"], r["instances"]) for r in patients] == [
        ("p1", 1, 2, 3),
        ("p2", 1, 2, 3),
        ("p3", 1, 2, 3),
    ]
    assert patients[0]["modalities"] == "CT,MR"
    datasets = as_json(mira(research, "ls", "datasets", "--json"))
    assert [(r["batch"], r["patients"], r["instances"], r["slides"]) for r in datasets] == [
        ("b1", 2, 6, 0),
        ("b2", 1, 3, 1),
    ]
    ct_series = as_json(mira(research, "ls", "series", "--modality", "CT", "--json"))
    assert {r["series_uid"] for r in ct_series} == {"se-p1-0", "se-p2-0", "se-p3-0"}
    assert {r["modality"] for r in ct_series} == {"CT"}
    one = as_json(mira(research, "ls", "instances", "--patient", "p2", "--json"))
    assert len(one) == 3 and all(r["key"].startswith("dicom/p2/") for r in one)
    studies = as_json(mira(research, "ls", "studies", "--batch", "b2", "--json"))
    assert [r["study_uid"] for r in studies] == ["st-p3"]
    slides = as_json(mira(research, "ls", "slides", "--json"))
    assert [(r["key"], r["mpp"]) for r in slides] == [("slides/s1.tiff", 0.5)]
    assert as_json(mira(research, "ls", "slides", "--modality", "CT", "--json")) == []
    assert len(as_json(mira(research, "ls", "slides", "--patient", "p3", "--json"))) == 1


def test_ls_prints_a_table_or_csv(research: Path) -> None:
    table = mira(research, "ls", "series", "--limit", "2")
    assert table.exit_code == 0, table.output
    assert "se-p1-0" in table.output and "se-p2-0" not in table.output
    csv = mira(research, "ls", "patients", "--csv")
    assert csv.output.splitlines()[0].replace('"', "") == (
        "patient_id,modalities,studies,series,instances"
    )
    assert len(csv.output.splitlines()) == 4
    assert mira(research, "ls", "--json", "--csv").exit_code == 2


def test_listing_reads_the_catalog_never_the_data_objects(
    research: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed: list[str] = []
    original = LocalStore.list

    def recording(self: LocalStore, prefix: str = "") -> Iterator[Any]:
        listed.append(prefix)
        return original(self, prefix)

    monkeypatch.setattr(LocalStore, "list", recording)
    for level in ("datasets", "patients", "studies", "series", "instances", "slides"):
        assert mira(research, "ls", level).exit_code == 0
    assert mira(research, "catalog", "query", "SELECT count(*) FROM instances").exit_code == 0
    # Each command also appends its audit record, which lists the log's own folder (audit/).
    assert listed and all(prefix.startswith(("catalog/", "audit")) for prefix in listed)
    assert any(prefix.startswith("catalog/") for prefix in listed)


def test_ls_of_a_level_the_catalog_lacks_is_empty(research: Path) -> None:
    result = mira(research, "ls", "instances", "--batch", "no-such-batch")
    assert result.exit_code == 0 and "instances: none (0 rows)" in result.output


def test_catalog_query_outputs(research: Path) -> None:
    sql = "SELECT modality, count(*) AS n FROM instances GROUP BY 1 ORDER BY 1"
    assert as_json(mira(research, "catalog", "query", sql, "--json")) == [
        {"modality": "CT", "n": 6},
        {"modality": "MR", "n": 3},
    ]
    csv = mira(research, "catalog", "query", sql, "--csv")
    assert csv.output.replace('"', "").splitlines() == ["modality,n", "CT,6", "MR,3"]
    table = mira(research, "catalog", "query", sql)
    assert "CT" in table.output and "(2 rows)" in table.output
    bad = mira(research, "catalog", "query", "SELECT nope FROM instances")
    assert isinstance(bad.exception, InvalidInput)


@pytest.fixture
def validated(tmp_path: Path) -> Path:
    from distributed import LocalCluster

    store: Store = open_store(tmp_path / "validated")
    write_dicom_batch(store, "good", original_files())
    write_dicom_batch(store, "bad", original_files(), {0: {"patient_identity_removed": "NO"}})
    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
    ) as cluster:
        for batch in ("good", "bad"):
            assess_batch(store, batch, dask_address=cluster.scheduler_address)
    return tmp_path / "validated"


def test_qa_summary_show_and_docs(validated: Path, tmp_path: Path) -> None:
    summary = mira(validated, "qa")
    assert summary.exit_code == 0, summary.output
    lines = {
        line.split("│")[1].strip(): line for line in summary.output.splitlines() if "│" in line
    }
    assert "fail" in lines["bad"] and "pass" in lines["good"]

    shown = mira(validated, "qa", "show", "bad")
    assert shown.exit_code == 0, shown.output
    assert "identity-removed" in shown.output and "gate fail" in shown.output
    document = json.loads(mira(validated, "qa", "show", "good", "--json").output)
    assert document["verdict"] == "pass"
    assert isinstance(mira(validated, "qa", "show", "nope").exception, InvalidInput)

    assert isinstance(mira(validated, "qa", "docs").exception, InvalidInput)
    built = mira(validated, "qa", "docs", "--build")
    assert built.exit_code == 0, built.output
    index = validated / "quality" / "data_docs" / "index.html"
    assert str(index) in built.output.replace("\n", "")
    copy = tmp_path / "docs-copy"
    downloaded = mira(validated, "qa", "docs", "--download", str(copy))
    assert downloaded.exit_code == 0, downloaded.output
    assert (copy / "index.html").read_bytes() == index.read_bytes()


def test_qa_without_results(research: Path) -> None:
    result = mira(research, "qa")
    assert result.exit_code == 0 and "no batch has been validated" in result.output


@pytest.mark.prefect
def test_qa_run_runs_the_flow(tmp_path: Path, prefect_api: str) -> None:
    store = open_store(tmp_path / "research")
    write_dicom_batch(store, "cli", original_files(["CT_small.dcm", "MR_small.dcm"]))
    result = mira(tmp_path / "research", "qa", "run", "cli")
    assert result.exit_code == 0, result.output
    assert "cli" in result.output and "pass" in result.output and "Data Docs" in result.output
    assert store.exists("quality/cli/validation.json")
