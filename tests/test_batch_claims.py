"""One run per batch, whoever starts it: the claim protocol, the pipeline's no-op, the sensor."""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydicom.data import get_testdata_file

from storage import Store, open_store
from tasks.ingest import claim_batch_run, pending_batches

if TYPE_CHECKING:
    from tests.prefect_server import PrefectTestServer

pytest_plugins = ["tests.prefect_fixtures"]


def upload(gateway: Path, batch: str) -> None:
    folder = gateway / "dropzone" / batch
    folder.mkdir(parents=True)
    shutil.copy(str(get_testdata_file("CT_small.dcm")), folder / "a.dcm")
    (folder / "_READY").touch()


def test_an_active_holder_keeps_the_batch_and_an_ended_one_hands_it_on(store: Store) -> None:
    active = {"run-a"}
    first = claim_batch_run(store, "b1", "pipeline", "run-a", "pipeline/b1", active.__contains__)
    assert first.claimed and first.holder.generation == 1
    second = claim_batch_run(store, "b1", "pipeline", "run-b", "pipeline/b1", active.__contains__)
    assert not second.claimed and second.holder.run_id == "run-a"
    again = claim_batch_run(store, "b1", "pipeline", "run-a", "pipeline/b1", active.__contains__)
    assert again.claimed, "a retry of the holder keeps its claim"
    active.clear()  # run-a ended (completed, failed or crashed)
    third = claim_batch_run(store, "b1", "pipeline", "run-b", "pipeline/b1", active.__contains__)
    assert third.claimed and third.holder.generation == 2
    other = claim_batch_run(store, "b2", "pipeline", "run-c", "pipeline/b2", active.__contains__)
    assert other.claimed, "batches are claimed independently"


def test_racing_starts_leave_exactly_one_holder(store: Store) -> None:
    outcomes = []

    def start(run: str) -> None:
        outcomes.append(claim_batch_run(store, "race", "pipeline", run, run, lambda _: True))

    threads = [threading.Thread(target=start, args=(f"run-{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o.claimed]
    assert len(winners) == 1
    assert {o.holder.run_id for o in outcomes} == {winners[0].holder.run_id}


def test_the_sensor_skips_batches_a_run_already_started(tmp_path: Path) -> None:
    upload(tmp_path / "gateway", "done-by-hand")
    upload(tmp_path / "gateway", "new")
    gateway = open_store(tmp_path / "gateway")
    claim_batch_run(gateway, "done-by-hand", "pipeline", "r1", "pipeline/done-by-hand", bool)
    assert [ref.name for ref in pending_batches(gateway)] == ["new"]


@pytest.mark.prefect
def test_a_second_start_while_one_runs_is_a_no_op(
    prefect_server: PrefectTestServer,
    prefect_api: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows.params import StoreParams
    from flows.pipeline import flow_run_is_active, pipeline

    monkeypatch.setenv("MIRA_DEID_SECRET", "a-throwaway-test-secret-of-32-bytes")
    upload(tmp_path / "gateway", "busy")
    gateway = open_store(tmp_path / "gateway")
    with get_client(sync_client=True) as client:
        holder = client.create_flow_run(pipeline, parameters={"batch": "busy"}, state=Running())
    assert flow_run_is_active(str(holder.id))
    assert not flow_run_is_active(str(uuid.uuid4()))
    claim_batch_run(gateway, "busy", "pipeline", str(holder.id), "pipeline/busy", bool)

    stores = StoreParams(gateway_url=str(tmp_path / "gateway"), research_url=str(tmp_path / "r"))
    summary = pipeline("busy", stores)
    assert summary.skipped is not None and str(holder.id) in summary.skipped
    assert summary.ingest is None and not gateway.exists("ingest/busy/summary.json")
