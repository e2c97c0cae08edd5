"""The split and snapshot stages as Prefect flows, on a local research store."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import open_store
from tests.test_snapshot import add_batch

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def test_split_then_snapshot_flows(tmp_path: Path) -> None:
    from flows.params import StoreParams
    from flows.snapshot import SnapshotParams, snapshot
    from flows.split import SplitParams, split

    research = tmp_path / "research"
    add_batch(open_store(research), "b1", range(6))
    stores = StoreParams(research_url=str(research))
    summary = split(SplitParams(seed=5), stores)
    assert summary.patients == 6 and summary.name == "default"
    result = snapshot(SnapshotParams(name="v1", retention_days=1), stores)
    assert result.created is not None and result.verified == result.created.entries == 14
    assert result.created.enforcement == "local-read-only" and not result.kept
