"""The Prefect UI names runs after their work, tags them with the batch and shows each summary."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.utilities.callables import parameter_schema
from pydicom.data import get_testdata_file

from flows.reporting import artifact_key

if TYPE_CHECKING:
    from tests.prefect_server import PrefectTestServer

pytest_plugins = ["tests.prefect_fixtures"]

STAGES = ("ingest", "deidentify", "convert", "quality", "split")


def test_artifact_keys_are_what_prefect_accepts() -> None:
    assert artifact_key("ingest", "Site_A 2024/11") == "ingest-site-a-2024-11"
    assert artifact_key("quality", "___") == "quality"


def test_the_batch_parameter_is_described_in_every_form() -> None:
    from flows.deidentify import deidentify
    from flows.ingest import ingest
    from flows.pipeline import pipeline

    for flow in (pipeline, ingest, deidentify):
        schema = parameter_schema(flow.fn).model_dump()["properties"]
        assert "dropzone/" in schema["batch"]["description"], flow.name


@pytest.mark.prefect
def test_runs_are_named_tagged_and_summarised(
    prefect_server: PrefectTestServer,
    prefect_api: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.params import StoreParams
    from flows.pipeline import pipeline

    batch = "Reporting_B1"
    folder = tmp_path / "gateway" / "dropzone" / batch
    folder.mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(str(get_testdata_file(name)), folder / name)
    (folder / "_READY").touch()
    monkeypatch.setenv("MIRA_DEID_SECRET", "a-throwaway-test-secret-of-32-bytes")
    monkeypatch.setenv("MIRA_DASK_WORKERS", "1")
    stores = StoreParams(gateway_url=str(tmp_path / "gateway"), research_url=str(tmp_path / "r"))
    pipeline(batch, stores)

    with get_client(sync_client=True) as client:
        tagged = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"batch:{batch}"]))
        )
        names = {run.name for run in tagged}
        assert {f"pipeline/{batch}", *(f"{stage}/{batch}" for stage in STAGES[:4])} <= names
        assert "split/default" in names and f"snapshot/after-{batch}" in names
        artifacts = {a.key: a for a in client.read_artifacts() if a.key}
    for stage in ("ingest", "deidentify", "quality"):
        artifact = artifacts[f"{stage}-reporting-b1"]
        assert artifact.type == "markdown" and batch in str(artifact.data)
    assert "| accepted | 2 |" in str(artifacts["ingest-reporting-b1"].data)
    assert "top hash" in str(artifacts[f"snapshot-after-{batch.lower().replace('_', '-')}"].data)
