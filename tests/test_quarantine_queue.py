"""The quarantine as a queue (issue 14, points 1 and 8): a scan hit holds one file, not the
batch; every held file can be listed, shown, released or dropped, each decision recorded; a UID
already published under another patient is a conflict across batches."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from mira.cli.root import app, register_commands
from mira.errors import InvalidInput
from storage import Store
from tasks import layout
from tasks.dataset import catalog
from tasks.deid import DeidPolicy, QuarantineQueue, flagged_values, policy_from_mapping
from tasks.deid.stage import deidentify_batch
from tasks.ingest.stage import ingest_batch

KEY = b"quarantine-queue-key-0123456789ab"
BATCH = "batch-0001"
LEAKY = {"name": "leaky", "safe_private": ["0009,ACME PACS 1.0,01"]}
PRIVATE_NOTE = "protocol MORRISON v2"  # a protocol named after a person: the scan cannot tell
LEAKY_UID = "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.99999"


def dicom_bytes(name: str, private_note: str = "", **attributes: object) -> bytes:
    """One of pydicom's own test files, with some values changed and, optionally, a private
    ACME block holding ``private_note``."""
    dataset = pydicom.dcmread(str(get_testdata_file(name)))
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    if private_note:
        block = dataset.private_block(0x0009, "ACME PACS 1.0", create=True)
        block.add_new(0x01, "LO", private_note)
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    return buffer.getvalue()


def leaky_ct() -> bytes:
    return dicom_bytes(
        "CT_small.dcm", PRIVATE_NOTE, PatientName="MORRISON^EVELYN", SOPInstanceUID=LEAKY_UID
    )


def drop_batch(gateway: Store, batch: str, files: dict[str, bytes], manifest: bool = False) -> None:
    for path, data in files.items():
        gateway.write_bytes(f"{layout.DROPZONE}/{batch}/{path}", data)
    if not manifest:
        gateway.write_bytes(f"{layout.DROPZONE}/{batch}/_READY", b"")


def write_manifest(gateway: Store, batch: str, files: dict[str, bytes]) -> None:
    entries = [
        {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        for path, data in files.items()
    ]
    document = {"batch": batch, "files": entries}
    gateway.write_bytes(f"{layout.DROPZONE}/{batch}/manifest.json", json.dumps(document).encode())


def run_batch(gateway: Store, research: Store, batch: str, policy: DeidPolicy) -> object:
    ingest_batch(gateway, batch)
    return deidentify_batch(gateway, research, batch, KEY, policy)


@pytest.fixture
def held_batch(store: Store) -> tuple[Store, Store, object]:
    """A batch of three real files, one of whose output the scan flags (on a local folder and
    on the real S3 server)."""
    gateway, research = store.child("gateway"), store.child("research")
    files = {
        "PAT/ct.dcm": dicom_bytes("CT_small.dcm"),
        "PAT/mr.dcm": dicom_bytes("MR_small.dcm"),
        "PAT/leaky.dcm": leaky_ct(),
    }
    drop_batch(gateway, BATCH, files)
    result = run_batch(gateway, research, BATCH, policy_from_mapping(LEAKY))
    return gateway, research, result


ITEM = f"{BATCH}/PAT/leaky.dcm"


def research_text(research: Store) -> bytes:
    return b"".join(research.read_bytes(o.key) for o in research.list() if o.key.endswith(".dcm"))


def test_a_flagged_file_is_held_and_the_rest_of_the_batch_publishes(
    held_batch: tuple[Store, Store, object],
) -> None:
    gateway, research, result = held_batch
    assert result.instances == 2 and result.files == 3  # type: ignore[attr-defined]
    assert result.quarantined == {"phi-suspect": 1}  # type: ignore[attr-defined]
    rows = catalog.read_table(research, "instances").to_pylist()
    assert {r["modality"] for r in rows} == {"CT", "MR"} and len(rows) == 2
    assert b"MORRISON" not in research_text(research)

    record = gateway.read_json(layout.reason_key(layout.quarantine_key(BATCH, "PAT/leaky.dcm")))
    assert record["reason"] == "phi-suspect" and record["stage"] == "deidentify"
    assert "(0009,1101)" in record["attributes"] and "(0009,1101)" in record["detail"]
    assert "MORRISON" not in json.dumps(record).upper()  # paths, never values
    # The output is held on the gateway side, exactly as staged.
    staged = gateway.read_bytes(record["staged_key"])
    assert hashlib.sha256(staged).hexdigest() == record["staged_sha256"]
    assert record["staged_key"].startswith(f"{layout.QUARANTINE}/{BATCH}/")
    assert gateway.read_json(f"deid/{BATCH}/summary.json")["quarantined"] == {"phi-suspect": 1}


def test_show_gives_each_flagged_attribute_and_its_value_in_the_output(
    held_batch: tuple[Store, Store, object],
) -> None:
    gateway, _, _ = held_batch
    item = QuarantineQueue(gateway).item(ITEM)
    assert item.status == "pending" and item.reason == "phi-suspect"
    staged = gateway.read_bytes(item.record["staged_key"])
    values = dict(flagged_values(staged, item.record["attributes"], item.record["research_key"]))
    assert values["(0009,1101)"] == PRIVATE_NOTE


def test_release_publishes_the_output_as_staged_with_its_catalog_rows(
    held_batch: tuple[Store, Store, object],
) -> None:
    gateway, research, _ = held_batch
    queue = QuarantineQueue(gateway)
    record = queue.item(ITEM).record
    decision = queue.release(ITEM, "dr-ada", "a protocol name, not the patient", research=research)
    key = record["research_key"]
    assert decision["result"] == key and decision["action"] == "released"
    assert research.read_bytes(key) == gateway.read_bytes(record["staged_key"])
    rows = {r["key"]: r for r in catalog.read_table(research, "instances").to_pylist()}
    assert len(rows) == 3 and rows[key]["batch"] == BATCH
    assert rows[key]["sha256"] == record["staged_sha256"]
    studies = catalog.read_part(research, "studies", BATCH)
    assert studies is not None and sum(studies.column("instances").to_pylist()) == 3
    batches = catalog.read_part(research, "batches", BATCH)
    assert batches is not None and batches.column("instances").to_pylist() == [3]

    item = queue.item(ITEM)
    assert item.status == "released"
    (recorded,) = item.decisions
    assert recorded["by"] == "dr-ada" and recorded["note"] == "a protocol name, not the patient"
    assert recorded["time"] and recorded["reason"] == "phi-suspect"
    with pytest.raises(InvalidInput, match="already released by dr-ada"):
        queue.drop(ITEM, "dr-bob")
    assert len(queue.item(ITEM).decisions) == 1  # the record stands, nothing replaced


def test_a_dropped_file_never_reaches_the_research_store(
    held_batch: tuple[Store, Store, object],
) -> None:
    gateway, research, _ = held_batch
    queue = QuarantineQueue(gateway)
    record = queue.item(ITEM).record
    before = sorted(o.key for o in research.list())
    with pytest.raises(InvalidInput, match="--by"):
        queue.drop(ITEM, " ")
    queue.drop(ITEM, "dr-bob", "the name is the patient's")
    assert sorted(o.key for o in research.list()) == before
    assert not research.exists(record["research_key"])
    assert not gateway.exists(record["staged_key"])  # nothing of it is kept to publish
    assert gateway.exists(layout.quarantine_key(BATCH, "PAT/leaky.dcm"))  # the evidence stays
    with pytest.raises(InvalidInput, match="already dropped"):
        queue.release(ITEM, "dr-ada", research=research)
    assert [i.status for i in queue.items()] == ["dropped"]


def test_every_reason_is_listed_and_release_is_refused_where_it_cannot_be_made_safe(
    local_store: Store,
) -> None:
    gateway, research = local_store.child("gateway"), local_store.child("research")
    ct = dicom_bytes("CT_small.dcm")
    listed = {
        "ct.dcm": ct,
        "leaky.dcm": leaky_ct(),
        "empty.dcm": b"",
        "notes.txt": b"scanned on the old console\n",
        "cut.dcm": dicom_bytes("MR_small.dcm")[:3000],
    }
    drop_batch(gateway, BATCH, {**listed, "extra.dcm": dicom_bytes("JPEG2000.dcm")}, True)
    write_manifest(gateway, BATCH, listed)
    run_batch(gateway, research, BATCH, policy_from_mapping(LEAKY))
    # The same instance again with another patient ID: ingest knows the first one.
    drop_batch(gateway, "batch-0002", {"ct.dcm": dicom_bytes("CT_small.dcm", PatientID="X99")})
    run_batch(gateway, research, "batch-0002", DeidPolicy.default())

    queue = QuarantineQueue(gateway)
    reasons = {item.id: item.reason for item in queue.items()}
    assert reasons == {
        f"{BATCH}/cut.dcm": "truncated",
        f"{BATCH}/empty.dcm": "empty-file",
        f"{BATCH}/extra.dcm": "not-in-manifest",
        f"{BATCH}/leaky.dcm": "phi-suspect",
        f"{BATCH}/notes.txt": "unsupported-type",
        "batch-0002/ct.dcm": "duplicate-uid-conflict",
    }
    assert [item.id for item in queue.items("batch-0002")] == ["batch-0002/ct.dcm"]
    for unsafe in ("cut.dcm", "empty.dcm", "notes.txt"):
        with pytest.raises(InvalidInput, match="cannot be released"):
            queue.release(f"{BATCH}/{unsafe}", "dr-ada", research=research)
    with pytest.raises(InvalidInput, match="SOP Instance UID"):
        queue.release("batch-0002/ct.dcm", "dr-ada", research=research)
    assert all(not item.decisions for item in queue.items())  # a refusal records nothing
    queue.drop(f"{BATCH}/notes.txt", "dr-ada", "a note, not an image")
    assert {i.id for i in queue.items() if i.status == "pending"} == set(reasons) - {
        f"{BATCH}/notes.txt"
    }


def test_release_of_an_ingest_hold_puts_the_file_back_through_the_pipeline(
    local_store: Store,
) -> None:
    gateway, research = local_store.child("gateway"), local_store.child("research")
    ct, mr = dicom_bytes("CT_small.dcm"), dicom_bytes("MR_small.dcm")
    drop_batch(gateway, BATCH, {"ct.dcm": ct, "late/mr.dcm": mr}, manifest=True)
    write_manifest(gateway, BATCH, {"ct.dcm": ct})
    run_batch(gateway, research, BATCH, DeidPolicy.default())
    queue = QuarantineQueue(gateway)
    decision = queue.release(f"{BATCH}/late/mr.dcm", "dr-ada", "uploaded after the manifest")
    new_batch = decision["result"]
    assert new_batch.startswith(f"{BATCH}-released-")
    assert gateway.read_bytes(f"{layout.DROPZONE}/{new_batch}/late/mr.dcm") == mr
    result = run_batch(gateway, research, new_batch, DeidPolicy.default())
    assert result.instances == 1  # type: ignore[attr-defined]
    modalities = {
        r["batch"]: r["modality"] for r in catalog.read_table(research, "instances").to_pylist()
    }
    assert modalities == {BATCH: "CT", new_batch: "MR"}


def test_a_uid_published_under_another_patient_is_a_conflict_across_batches(
    local_store: Store,
) -> None:
    """Two gateways (two sites, or one whose ingest records were lost) publish into one
    research store: ingest cannot know the other's instances, de-identification must."""
    site_a, site_b = local_store.child("site-a"), local_store.child("site-b")
    research = local_store.child("research")
    original = dicom_bytes("CT_small.dcm")
    drop_batch(site_a, "batch-a", {"ct.dcm": original})
    assert run_batch(site_a, research, "batch-a", DeidPolicy.default()).instances == 1  # type: ignore[attr-defined]
    (published,) = [o.key for o in research.list() if o.key.endswith(".dcm")]
    before = research.read_bytes(published)

    drop_batch(site_b, "batch-b", {"ct-other-id.dcm": dicom_bytes("CT_small.dcm", PatientID="X9")})
    other = run_batch(site_b, research, "batch-b", DeidPolicy.default())
    assert other.instances == 0 and other.quarantined == {"uid-conflict": 1}  # type: ignore[attr-defined]
    reason = site_b.read_json(
        layout.reason_key(layout.quarantine_key("batch-b", "ct-other-id.dcm"))
    )
    assert reason["reason"] == "uid-conflict" and published in reason["detail"]
    assert "batch-a" in reason["detail"]
    assert [o.key for o in research.list() if o.key.endswith(".dcm")] == [published]
    assert research.read_bytes(published) == before

    site_c = local_store.child("site-c")
    drop_batch(site_c, "batch-c", {"copy.dcm": original})
    again = run_batch(site_c, research, "batch-c", DeidPolicy.default())
    assert again.instances == 0 and again.duplicates == 1 and not again.quarantined  # type: ignore[attr-defined]
    records = site_c.read_json("deid/batch-c/duplicates.json")
    assert records[0]["path"] == "copy.dcm" and published in records[0]["duplicate_of"]
    keys = [r["key"] for r in catalog.read_table(research, "instances").to_pylist()]
    assert keys == [published]  # one row: counts printed are counts written


def test_a_rerun_of_a_batch_is_not_a_duplicate_of_itself(local_store: Store) -> None:
    gateway, research = local_store.child("gateway"), local_store.child("research")
    drop_batch(gateway, BATCH, {"ct.dcm": dicom_bytes("CT_small.dcm")})
    run_batch(gateway, research, BATCH, DeidPolicy.default())
    gateway.delete(f"deid/{BATCH}/summary.json")  # as if the first run died before its record
    again = deidentify_batch(gateway, research, BATCH, KEY, DeidPolicy.default())
    assert again.instances == 1 and again.duplicates == 0 and not again.quarantined


def test_quarantine_commands_on_a_mira_deid_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_commands()
    monkeypatch.setenv("MIRA_DEID_SECRET", KEY.decode())
    source, out, held = tmp_path / "in", tmp_path / "out", tmp_path / "held"
    source.mkdir()
    (source / "ct.dcm").write_bytes(dicom_bytes("CT_small.dcm"))
    (source / "leaky.dcm").write_bytes(leaky_ct())
    (source / "notes.txt").write_text("not an image\n")
    profile = tmp_path / "leaky.json"
    profile.write_text(json.dumps(LEAKY))
    runner = CliRunner()
    ran = runner.invoke(
        app, ["deid", str(source), str(out), "--quarantine", str(held), "--profile", str(profile)]
    )
    assert ran.exit_code == 0, ran.output
    assert "held 2 of 3 files (66.7%): phi-suspect 1, unsupported-type 1" in ran.output
    assert len(list(out.rglob("*.dcm"))) == 1

    listed = runner.invoke(app, ["quarantine", "list", "--in", str(held), "--json"])
    assert listed.exit_code == 0, listed.output
    assert {(r["item"], r["reason"]) for r in json.loads(listed.output)} == {
        ("leaky.dcm", "phi-suspect"),
        ("notes.txt", "unsupported-type"),
    }
    shown = runner.invoke(app, ["quarantine", "show", "leaky.dcm", "--in", str(held)])
    assert shown.exit_code == 0, shown.output
    assert "(0009,1101)" in shown.output and PRIVATE_NOTE in shown.output
    refused = runner.invoke(
        app, ["quarantine", "release", "notes.txt", "--by", "ada", "--in", str(held)]
    )
    assert refused.exit_code != 0 and "cannot be released" in str(refused.exception)
    released = runner.invoke(
        app,
        ["quarantine", "release", "leaky.dcm", "--by", "ada", "--note", "ok", "--in", str(held)],
    )
    assert released.exit_code == 0, released.output
    assert len(list(out.rglob("*.dcm"))) == 2
    record = json.loads((held / "leaky.dcm.reason.json").read_text())
    assert (out / record["research_key"]).read_bytes() == (held / record["staged_key"]).read_bytes()
    history = runner.invoke(app, ["quarantine", "show", "leaky.dcm", "--in", str(held)])
    assert "released by ada" in history.output and "(note: ok)" in history.output
    pending = runner.invoke(app, ["quarantine", "list", "--in", str(held)])
    assert "notes.txt" in pending.output and "leaky.dcm" not in pending.output


def test_the_run_summary_prints_the_held_share_and_duplicates_it_wrote(
    local_store: Store,
) -> None:
    """The rows `mira run` prints, from the results the ingest and deidentify flows return:
    the counts printed are the counts the stages wrote to their summaries."""
    from flows.summaries import PipelineSummary
    from mira.cli.pipeline import SUMMARY_ROWS, summary_row
    from tasks.ingest.stage import IngestResult

    gateway, research = local_store.child("gateway"), local_store.child("research")
    ct = dicom_bytes("CT_small.dcm")
    files = {"ct.dcm": ct, "ct-copy.dcm": ct, "mr.dcm": dicom_bytes("MR_small.dcm")}
    drop_batch(gateway, BATCH, {**files, "empty.dcm": b"", "leaky.dcm": leaky_ct()})
    ingested: IngestResult = ingest_batch(gateway, BATCH)
    deidentified = deidentify_batch(gateway, research, BATCH, KEY, policy_from_mapping(LEAKY))
    summary = PipelineSummary(batch=BATCH, ingest=ingested, deidentify=deidentified)
    row = dict(zip(SUMMARY_ROWS, summary_row(summary), strict=True))
    assert (
        row["held back (share, by reason)"] == "2 of 5 files (40.0%): empty-file 1, phi-suspect 1"
    )
    assert row["duplicates"] == "ingest 1, deidentify 0"
    assert row["de-identified"] == "2 DICOM, 0 slides"
    written = {
        **gateway.read_json(f"ingest/{BATCH}/summary.json")["quarantined"],
        **gateway.read_json(f"deid/{BATCH}/summary.json")["quarantined"],
    }
    assert written == {"empty-file": 1, "phi-suspect": 1} == summary.held
    assert gateway.read_json(f"ingest/{BATCH}/summary.json")["duplicates"] == 1
    lines = summary.stage_lines()
    assert "ingest: 3 accepted, 1 quarantined, 1 duplicates" in lines
    assert any("(1 phi-suspect), 0 duplicates" in line for line in lines)
    assert lines[-1] == "held 2 of 5 files (40.0%): empty-file 1, phi-suspect 1"


def test_a_held_slide_is_shown_and_released_into_the_slides_table(
    local_store: Store, tmp_path: Path
) -> None:
    """A profile that keeps the Aperio Filename: the upload's own file name is found in the
    output's ImageDescription, so the slide is held; released, it is catalogued as a slide."""
    from tasks.deid import DeidPolicy as Policy
    from tests.slides import write_slide

    gateway, research = local_store.child("gateway"), local_store.child("research")
    slide = write_slide(tmp_path / "slide.svs", 1024, 1024, kind="svs").read_bytes()
    drop_batch(gateway, BATCH, {"DOE-JOHN-1984-S1.svs": slide})  # the name Filename holds
    keeps_filename = {"slide_safe_keys": sorted(Policy.default().slide_safe_keys | {"Filename"})}
    result = run_batch(gateway, research, BATCH, policy_from_mapping(keeps_filename))
    assert result.quarantined == {"phi-suspect": 1} and result.slides == 0  # type: ignore[attr-defined]
    assert [o.key for o in research.list() if o.key.startswith("slides/")] == []

    queue = QuarantineQueue(gateway)
    item = queue.item(f"{BATCH}/DOE-JOHN-1984-S1.svs")
    assert item.record["attributes"] == ["page[0].ImageDescription"]
    staged = gateway.read_bytes(item.record["staged_key"])
    ((_, value),) = flagged_values(staged, item.record["attributes"], "")
    assert "Filename = DOE-JOHN-1984-S1" in value
    decision = queue.release(item.id, "dr-ada", "a test scan's name", research=research)
    key = decision["result"]
    assert key.startswith("slides/") and research.read_bytes(key) == staged
    (row,) = catalog.read_table(research, "slides").to_pylist()
    assert row["key"] == key and row["batch"] == BATCH
    batches = catalog.read_part(research, "batches", BATCH)
    assert batches is not None and batches.column("slides").to_pylist() == [1]


def test_release_is_refused_when_the_uid_was_published_under_another_key_meanwhile(
    local_store: Store,
) -> None:
    research = local_store.child("research")
    site_a, site_b = local_store.child("site-a"), local_store.child("site-b")
    drop_batch(site_a, "batch-a", {"leaky.dcm": leaky_ct()})
    run_batch(site_a, research, "batch-a", policy_from_mapping(LEAKY))
    same_uid = dicom_bytes("CT_small.dcm", SOPInstanceUID=LEAKY_UID, PatientID="OTHER-9")
    drop_batch(site_b, "batch-b", {"ct.dcm": same_uid})
    assert run_batch(site_b, research, "batch-b", DeidPolicy.default()).instances == 1  # type: ignore[attr-defined]
    before = sorted((o.key, o.etag) for o in research.list())

    queue = QuarantineQueue(site_a)
    with pytest.raises(InvalidInput, match="already published as dicom/"):
        queue.release("batch-a/leaky.dcm", "dr-ada", research=research)
    assert sorted((o.key, o.etag) for o in research.list()) == before
    assert queue.item("batch-a/leaky.dcm").status == "pending"
