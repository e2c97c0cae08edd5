"""One layout for both stores: the writer of a key and every reader of it agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mira.errors import InvalidInput
from tasks import layout

SLIDE_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,40}", fullmatch=True)


@given(SLIDE_IDS)
def test_slide_keys_round_trip_to_one_pyramid(slide_id: str) -> None:
    key = layout.slide_key(slide_id)
    assert key == f"slides/{slide_id}.tiff"
    assert layout.slide_id_of(key) == slide_id
    assert layout.pyramid_key(key) == f"pyramids/{slide_id}.ome.zarr"


@pytest.mark.parametrize(
    ("key", "pyramid"),
    [
        ("slides/abc.tiff", "pyramids/abc.ome.zarr"),
        # the convert stage names a pyramid by everything before ".tiff"; QA and snapshots
        # used to strip ".ome" too and looked for a pyramid that was never written
        ("slides/x.ome.tiff", "pyramids/x.ome.ome.zarr"),
    ],
)
def test_every_stage_derives_the_same_pyramid(key: str, pyramid: str) -> None:
    assert layout.pyramid_key(key) == pyramid


@pytest.mark.parametrize(
    "key", ["slides/a.svs", "slides/.tiff", "slides/sub/a.tiff", "dicom/p/a.tiff", "a.tiff"]
)
def test_keys_that_are_not_research_slides_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput, match="not a research slide key"):
        layout.pyramid_key(key)


def test_instance_and_quarantine_keys() -> None:
    assert layout.instance_key("P1", "1.2", "1.2.3", "1.2.3.4") == "dicom/P1/1.2/1.2.3/1.2.3.4.dcm"
    assert layout.quarantine_key("b1", "x/y.dcm") == "quarantine/b1/x/y.dcm"
    assert layout.reason_key("quarantine/b1/x/y.dcm") == "quarantine/b1/x/y.dcm.reason.json"


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-a", "a" * 129])
def test_snapshot_names_are_one_safe_segment(name: str) -> None:
    with pytest.raises(InvalidInput, match="invalid snapshot name"):
        layout.snapshot_folder(name)
