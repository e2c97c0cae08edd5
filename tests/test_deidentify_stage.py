"""The de-identification stage on a real drop zone: all-or-nothing publish, no PHI, reruns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydicom
import pytest
from typer.testing import CliRunner

from mira.cli.root import app, register_commands
from storage import Store
from tasks.dataset import catalog
from tasks.deid import DeidPolicy, policy_from_mapping
from tasks.deid.stage import deidentify_batch
from tasks.ingest.stage import ingest_batch
from tasks.sample.generate import generate_sample_data

KEY = b"stage-test-key-0123456789abcdef"
RADIOLOGY = "batch-0001-radiology"
PATHOLOGY = "batch-0002-pathology"
MIXED = "batch-0003-mixed"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "dropzone"
    generate_sample_data(root, patients=2, slides=1, slide_size=1024)
    return root


def planted_identifiers(sample: Path) -> set[str]:
    truth = json.loads((sample / "_sample_phi.json").read_text())
    found: set[str] = set()
    for patient in truth["patients"]:
        for kind, values in patient["identifiers"].items():
            # Times of day are kept by design: dates shift by whole days (docs in tasks/deid).
            if kind != "times":
                found |= {v for v in values if len(v) >= 6}
        for slide in patient["slides"]:
            found |= {str(v) for k, v in slide.items() if k != "path" and len(str(v)) >= 6}
    return found


def upload(sample: Path, gateway: Store, batches: tuple[str, ...]) -> None:
    for batch in batches:
        for path in sorted((sample / batch).rglob("*")):
            if path.is_file():
                key = f"dropzone/{path.relative_to(sample).as_posix()}"
                gateway.write_bytes(key, path.read_bytes())


def research_bytes(research: Store) -> dict[str, bytes]:
    return {o.key: research.read_bytes(o.key) for o in research.list()}


def test_batches_publish_without_any_planted_identifier(store: Store, sample: Path) -> None:
    gateway, research = store.child("gateway"), store.child("research")
    batches = (RADIOLOGY, PATHOLOGY, MIXED)
    upload(sample, gateway, batches)
    results = {}
    for batch in batches:
        ingest_batch(gateway, batch)
        results[batch] = deidentify_batch(gateway, research, batch, KEY, DeidPolicy.default())
    assert results[RADIOLOGY].instances == 2 * (24 + 4)
    assert results[PATHOLOGY].slides == 1
    assert results[MIXED].scrubbed == results[MIXED].instances >= 1  # the burned-in US files
    outputs = research_bytes(research)
    identifiers = planted_identifiers(sample)
    leaks = [
        (key, ident)
        for key, data in outputs.items()
        for ident in identifiers
        if ident.encode() in data or ident in key
    ]
    assert leaks == []
    instances = catalog.read_table(research, "instances").to_pylist()
    assert {r["patient_identity_removed"] for r in instances} == {"YES"}
    for row in instances:
        assert row["key"] in outputs
        ds = pydicom.dcmread(research.open_read(row["key"]), stop_before_pixels=True)
        assert ds.SOPInstanceUID == row["sop_instance_uid"] and ds.PatientID == row["patient_id"]
    # The gateway keeps no staged copies once published.
    assert [o.key for o in gateway.list("deid") if "/staging/" in o.key] == []


def test_rerun_rewrites_nothing(local_store: Store, sample: Path) -> None:
    gateway, research = local_store.child("gateway"), local_store.child("research")
    upload(sample, gateway, (RADIOLOGY,))
    ingest_batch(gateway, RADIOLOGY)
    deidentify_batch(gateway, research, RADIOLOGY, KEY, DeidPolicy.default())
    before = [(o.key, o.etag) for o in research.list()]
    again = deidentify_batch(gateway, research, RADIOLOGY, KEY, DeidPolicy.default())
    assert again.already_done
    assert [(o.key, o.etag) for o in research.list()] == before


def test_a_leak_holds_its_files_and_publishes_the_rest(local_store: Store, sample: Path) -> None:
    """A profile that keeps the PHI-laden private block: the files whose output carries it are
    held as phi-suspect (tests/test_quarantine_queue.py follows them through review); the
    others publish, and nothing of the held ones reaches the research store."""
    gateway, research = local_store.child("gateway"), local_store.child("research")
    upload(sample, gateway, (RADIOLOGY,))
    ingest_batch(gateway, RADIOLOGY)
    leaky = policy_from_mapping(
        {"name": "leaky", "safe_private": ["0009,ACME PACS 1.0,01", "0009,ACME PACS 1.0,02"]}
    )
    result = deidentify_batch(gateway, research, RADIOLOGY, KEY, leaky)
    held = result.quarantined.get("phi-suspect", 0)
    assert held >= 1 and result.instances + held == result.files
    reasons = [
        gateway.read_json(o.key)
        for o in gateway.list("quarantine")
        if o.key.endswith(".reason.json")
    ]
    assert len(reasons) == held and {r["reason"] for r in reasons} == {"phi-suspect"}
    assert all(r["stage"] == "deidentify" for r in reasons)
    published = {o.key for o in research.list() if o.key.endswith(".dcm")}
    assert len(published) == result.instances
    assert not published & {r["research_key"] for r in reasons}
    identifiers = planted_identifiers(sample)
    outputs = research_bytes(research)
    assert [i for i in identifiers for data in outputs.values() if i.encode() in data] == []


def test_deid_and_phi_scan_commands(
    tmp_path: Path, sample: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_commands()
    monkeypatch.setenv("MIRA_DEID_SECRET", KEY.decode())
    runner = CliRunner()
    source = sample / MIXED
    out, quarantine = tmp_path / "out", tmp_path / "quarantine"
    result = runner.invoke(app, ["deid", str(source), str(out), "--quarantine", str(quarantine)])
    assert result.exit_code == 0, result.output
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.dcm"))
    assert written and all(p.startswith("dicom/") for p in written)
    reasons: list[dict[str, Any]] = [
        json.loads(p.read_text()) for p in quarantine.rglob("*.reason.json")
    ]
    assert {r["reason"] for r in reasons} >= {
        "unsupported-type"
    }  # the text note and the empty file
    clean = runner.invoke(app, ["phi-scan", str(out), "--against", str(source)])
    assert clean.exit_code == 0, clean.output
    dirty = runner.invoke(app, ["phi-scan", str(source), "--against", str(source)])
    assert dirty.exit_code != 0
    assert "PHI hits" in dirty.output


def test_series_studies_and_batches_tables(local_store: Store, sample: Path) -> None:
    gateway, research = local_store.child("gateway"), local_store.child("research")
    upload(sample, gateway, (RADIOLOGY,))
    ingest_batch(gateway, RADIOLOGY)
    deidentify_batch(gateway, research, RADIOLOGY, KEY, DeidPolicy.default())
    series = catalog.query_catalog(
        research, "SELECT modality, instances, mean_slice_spacing FROM series ORDER BY modality"
    ).to_pylist()
    assert [s["modality"] for s in series] == ["CT", "CT", "MR", "MR"]  # two patients
    ct = [s for s in series if s["modality"] == "CT"]
    assert all(s["instances"] == 24 and s["mean_slice_spacing"] > 0 for s in ct)
    studies = catalog.read_table(research, "studies").to_pylist()
    assert sum(s["instances"] for s in studies) == 2 * 28
    batches = catalog.read_table(research, "batches").to_pylist()
    assert [(b["batch"], b["instances"]) for b in batches] == [(RADIOLOGY, 56)]
