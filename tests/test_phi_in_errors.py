"""Drop-zone paths (patients' names, dates) never reach Prefect or webhooks through an error.

The hostile case: a batch uploaded as ``SMITH_MARIA/20230612_MR/IM0004.dcm`` whose file vanishes
between ingest and de-identification. The failure is reported; Prefect's database (every byte of
the server's SQLite files) and the webhook bodies hold the batch and an object index, never the
folder or file names.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from pydicom.data import get_testdata_file

from mira.errors import MiraError, ObjectNotFound, TransientStoreError
from storage import open_store
from tasks.ingest import GatewayNames, gateway_names_hidden

if TYPE_CHECKING:
    from tests.prefect_fixtures import Receiver
    from tests.prefect_server import PrefectTestServer

pytest_plugins = ["tests.prefect_fixtures"]

PHI_FOLDERS = ("SMITH_MARIA", "20230612_MR")
PHI_FILE = "IM0004.dcm"


def upload(gateway: Path, batch: str) -> None:
    folder = gateway / "dropzone" / batch / PHI_FOLDERS[0] / PHI_FOLDERS[1]
    folder.mkdir(parents=True)
    for index, name in enumerate(("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")):
        shutil.copy(str(get_testdata_file(name)), folder / f"IM000{index + 1}.dcm")
    shutil.copy(str(get_testdata_file("CT_small.dcm")), folder / PHI_FILE)
    (gateway / "dropzone" / batch / "_READY").touch()


def test_paths_become_batch_and_index(tmp_path: Path) -> None:
    upload(tmp_path / "gateway", "b1")
    gateway = open_store(tmp_path / "gateway")
    key = f"dropzone/b1/{'/'.join(PHI_FOLDERS)}/{PHI_FILE}"
    with pytest.raises(ObjectNotFound) as caught, gateway_names_hidden(gateway, "b1"):
        raise ObjectNotFound(f"no such object: {gateway.url_of(key)}")
    message = str(caught.value)
    assert message == "no such object: b1 object #3"
    assert caught.value.__traceback__ is not None, "the frames stay for the gateway's own logs"


def test_a_transient_error_stays_transient_and_unknown_errors_are_named(tmp_path: Path) -> None:
    upload(tmp_path / "gateway", "b1")
    gateway = open_store(tmp_path / "gateway")
    with pytest.raises(TransientStoreError) as transient, gateway_names_hidden(gateway, "b1"):
        raise TransientStoreError(f"timeout reading {PHI_FOLDERS[0]}/{PHI_FOLDERS[1]}/{PHI_FILE}")
    assert "SMITH" not in str(transient.value) and "b1 object #3" in str(transient.value)
    with pytest.raises(MiraError) as other, gateway_names_hidden(gateway, "b1"):
        raise KeyError(f"{PHI_FOLDERS[0]} has no series")
    assert str(other.value) == "KeyError: 'b1 object has no series'"


def test_paths_are_cut_even_when_the_listing_fails(tmp_path: Path) -> None:
    names = GatewayNames.of_batch(open_store(tmp_path / "nowhere"), "b1")
    text = names.redact("cannot read s3://bucket/gw/dropzone/b1/SMITH_MARIA/IM1.dcm: timeout")
    assert text == "cannot read b1 object: timeout"


@pytest.fixture
def webhooks(webhook_receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    monkeypatch.setenv("MIRA_WEBHOOK_URLS", webhook_receiver.url)
    monkeypatch.setenv("MIRA_DEID_SECRET", "a-throwaway-test-secret-of-32-bytes")
    monkeypatch.setenv("MIRA_DASK_WORKERS", "1")
    yield webhook_receiver


def assert_no_phi_in_prefect_or_webhooks(server: PrefectTestServer, hooks: Receiver) -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    tokens = [*PHI_FOLDERS, PHI_FILE.removesuffix(".dcm")]
    database = [p for p in (server.root / "prefect").rglob("*.db*") if p.is_file()]
    assert database, "the test server keeps its state in SQLite under its home"
    for path in database:
        data = path.read_bytes()
        for token in tokens:
            assert token.encode() not in data, f"{token} in Prefect's {path.name}"
    assert hooks.accepted, "the run's end was announced"
    for request in hooks.requests:
        body = str(request["json"])
        assert not [t for t in tokens if t in body], body


@pytest.mark.prefect
def test_a_failing_quarantine_leaves_no_path_in_prefect_or_webhooks(
    prefect_server: PrefectTestServer,
    prefect_api: str,
    webhooks: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quarantine cannot be written (a file where its folder should be): ingest fails."""
    from flows.params import StoreParams
    from flows.pipeline import pipeline

    gateway = tmp_path / "gateway"
    upload(gateway, "unwritable")
    bad = gateway / "dropzone" / "unwritable" / PHI_FOLDERS[0] / PHI_FOLDERS[1] / "IM0009.dcm"
    bad.write_bytes(b"DICM but not really" * 10)
    (gateway / "quarantine").mkdir()
    (gateway / "quarantine" / "unwritable").write_text("in the way")
    state = pipeline(
        "unwritable",
        StoreParams(gateway_url=str(gateway), research_url=str(tmp_path / "research")),
        return_state=True,
    )
    assert state.is_failed()
    assert "unwritable object" in (state.message or ""), state.message
    assert_no_phi_in_prefect_or_webhooks(prefect_server, webhooks)


@pytest.mark.prefect
def test_a_vanished_file_leaves_no_path_in_prefect_or_webhooks(
    prefect_server: PrefectTestServer,
    prefect_api: str,
    webhooks: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Deleted between ingest and de-identification: quarantined or failed, never named."""
    import flows.pipeline
    from flows.deidentify import deidentify
    from flows.params import StoreParams
    from flows.pipeline import pipeline

    gateway_dir, research = tmp_path / "gateway", tmp_path / "research"
    upload(gateway_dir, "vanish")
    victim = gateway_dir / "dropzone" / "vanish" / PHI_FOLDERS[0] / PHI_FOLDERS[1] / PHI_FILE

    def vanish_then_deidentify(batch: str, stores: StoreParams) -> object:
        victim.unlink()  # deleted on the gateway between ingest and de-identification
        return deidentify(batch, stores)

    monkeypatch.setattr(flows.pipeline, "deidentify", vanish_then_deidentify)
    state = pipeline(
        "vanish",
        StoreParams(gateway_url=str(gateway_dir), research_url=str(research)),
        return_state=True,
    )
    if state.is_failed():
        assert "vanish object #3" in (state.message or ""), state.message
    assert_no_phi_in_prefect_or_webhooks(prefect_server, webhooks)
