"""The review queue: pending items stay out of splits and snapshots until a person accepts them;
decisions are new rows, so the history is never lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mira.cli import catalog as catalog_commands
from mira.cli import qa as qa_commands
from mira.cli import review as review_commands
from mira.cli.root import common
from mira.errors import InvalidInput
from storage import Store
from tasks.dataset import catalog
from tasks.quality import review
from tasks.quality.review import ReviewItem

runner = CliRunner()


def item(key: str, reasons: str = "blur: 0.1 < 0.5") -> ReviewItem:
    return ReviewItem(
        key=key,
        batch="b1",
        kind="instance",
        reasons=reasons,
        status="pending",
        thumbnail_key=f"review/thumbnails/{key.replace('/', '__')}.png",
    )


KEYS = ("dicom/p/s/se/1.dcm", "dicom/p/s/se/2.dcm", "dicom/p/s/se/3.dcm")


def test_pending_items_are_excluded_until_accepted(store: Store) -> None:
    review.enqueue(store, "b1", [item(k) for k in KEYS])
    assert catalog.excluded_keys(store) == set(KEYS)
    assert [i.key for i in review.list_items(store)] == list(KEYS)

    accepted = review.decide(store, KEYS[0], "accepted", "dr. ada", "artefact is outside the ROI")
    review.decide(store, KEYS[1], "rejected", "dr. ada")
    assert catalog.excluded_keys(store) == {KEYS[1], KEYS[2]}
    assert [i.key for i in review.list_items(store)] == [KEYS[2]]
    assert [i.status for i in review.list_items(store, None)] == ["accepted", "rejected", "pending"]
    assert accepted.decided_by == "dr. ada" and accepted.note == "artefact is outside the ROI"
    assert accepted.reasons == "blur: 0.1 < 0.5"  # the decision keeps what it decided on


def test_decisions_are_new_rows_and_history_is_kept(store: Store) -> None:
    review.enqueue(store, "b1", [item(KEYS[0])])
    review.decide(store, KEYS[0], "rejected", "bob")
    review.decide(store, KEYS[0], "accepted", "carol", "second opinion")
    rows = review.history(store, KEYS[0])
    assert [(r.status, r.decided_by) for r in rows] == [
        ("pending", ""),
        ("rejected", "bob"),
        ("accepted", "carol"),
    ]
    assert rows[0].updated_at < rows[1].updated_at < rows[2].updated_at
    parts = [p.key for p in catalog.list_parts(store, "review")]
    assert len(parts) == 3 and sum("decision-" in p for p in parts) == 2
    assert KEYS[0] not in catalog.excluded_keys(store)


def test_revalidation_keeps_decisions_unless_the_reasons_change(local_store: Store) -> None:
    review.enqueue(local_store, "b1", [item(k) for k in KEYS])
    review.decide(local_store, KEYS[0], "accepted", "ada")
    review.decide(local_store, KEYS[1], "accepted", "ada")
    # Nightly run: KEYS[0] still fails the same way, KEYS[1] now for a new reason, KEYS[2] passes.
    review.enqueue(local_store, "b1", [item(KEYS[0]), item(KEYS[1], "contrast: 3 < 5")])
    current = {i.key: i for i in review.list_items(local_store, None)}
    assert current[KEYS[0]].status == "accepted"
    assert current[KEYS[1]].status == "pending"
    assert KEYS[2] not in current  # no longer flagged: not in the queue
    assert catalog.excluded_keys(local_store) == {KEYS[1]}
    # Nothing flagged any more: the queue part goes away, the decisions stay in force.
    review.enqueue(local_store, "b1", [])
    assert review.list_items(local_store) == []
    assert [r.status for r in review.history(local_store, KEYS[0])] == ["accepted"]
    assert catalog.excluded_keys(local_store) == set()


def test_bad_decisions_are_refused(local_store: Store) -> None:
    review.enqueue(local_store, "b1", [item(KEYS[0])])
    with pytest.raises(InvalidInput, match="no review item"):
        review.decide(local_store, "dicom/unknown.dcm", "accepted", "ada")
    with pytest.raises(InvalidInput, match="accepted, rejected"):
        review.decide(local_store, KEYS[0], "maybe", "ada")
    with pytest.raises(InvalidInput, match="--by"):
        review.decide(local_store, KEYS[0], "accepted", "  ")


def cli() -> typer.Typer:
    app = typer.Typer()
    app.callback()(common)
    for commands in (catalog_commands, qa_commands, review_commands):
        commands.register(app)
    return app


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich tables wide enough that keys are not folded across lines."""
    from mira.cli.common import out

    monkeypatch.setattr(out, "width", 250)


@pytest.mark.usefixtures("wide_console")
def test_review_commands(tmp_path: Path) -> None:
    from storage import open_store

    research = tmp_path / "research"
    store = open_store(research)
    review.enqueue(store, "b1", [item(k) for k in KEYS])
    store.write_bytes(item(KEYS[0]).thumbnail_key, b"\x89PNG")
    app, base = cli(), ["--research", str(research), "review"]

    listed = runner.invoke(app, [*base, "list"])
    assert listed.exit_code == 0, listed.output
    assert all(k in listed.output for k in KEYS) and "pending" in listed.output

    shown = runner.invoke(app, [*base, "show", KEYS[0]])
    assert shown.exit_code == 0, shown.output
    assert str(research / "review" / "thumbnails") in shown.output.replace("\n", "")
    assert "blur" in shown.output

    accepted = runner.invoke(app, [*base, "accept", KEYS[0], "--by", "ada", "--note", "fine"])
    assert accepted.exit_code == 0, accepted.output
    rejected = runner.invoke(app, [*base, "reject", KEYS[1], "--by", "bob"])
    assert rejected.exit_code == 0, rejected.output
    assert catalog.excluded_keys(store) == {KEYS[1], KEYS[2]}

    pending = runner.invoke(app, [*base, "list", "--json"])
    assert [row["key"] for row in json.loads(pending.output)] == [KEYS[2]]
    everything = runner.invoke(app, [*base, "list", "--all", "--json"])
    statuses = {r["key"]: r["status"] for r in json.loads(everything.output)}
    assert statuses == {KEYS[0]: "accepted", KEYS[1]: "rejected", KEYS[2]: "pending"}

    missing_by = runner.invoke(app, [*base, "accept", KEYS[2]])
    assert missing_by.exit_code == 2  # --by is required
    unknown = runner.invoke(app, [*base, "accept", "dicom/none.dcm", "--by", "ada"])
    assert isinstance(unknown.exception, InvalidInput)
