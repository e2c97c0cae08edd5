"""Slides to OME-Zarr pyramids: pixels, metadata, validation, S3, skipping, resuming after a kill."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic_zarr.v2
import pytest
import tifffile
import zarr
from imagecodecs import zstd_decode
from ome_zarr_models.v04 import Image as ImageV04
from ome_zarr_models.v05.image import Image as ImageV05
from zarr.core.metadata import ArrayV3Metadata

from mira.errors import InvalidInput, TransientStoreError
from storage import Store, open_store
from storage.local import TEMP_MARK
from tasks.parallel import dask_client
from tasks.wsi.convert import ConvertOptions, convert_pending_slides, convert_slide
from tasks.wsi.ngff import read_completion_record
from tests.relay import Relay
from tests.seaweedfs import SeaweedServer
from tests.slides import PHI_FIELDS, write_slide
from tests.test_wsi_pyramid import reference_mean
from tests.test_wsi_source import real_slide

REPO = Path(__file__).resolve().parent.parent
# ome-zarr-models 1.6 leaves the v0.4 Image model's forward references unresolved under
# pydantic-zarr 0.9: resolve them with pydantic-zarr's own v2 names before validating.
ImageV04.model_rebuild(
    _types_namespace={n: getattr(pydantic_zarr.v2, n) for n in dir(pydantic_zarr.v2)}
)


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    """One small process cluster for the module (a LocalCluster per call costs seconds)."""
    with dask_client(workers=2) as client:
        yield str(client.scheduler_info()["address"])


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """Generated slides (900 x 1300, odd level sizes below) in a local source store."""
    folder = tmp_path_factory.mktemp("wsi-sources")
    layouts: dict[str, dict[str, Any]] = {
        "svs-jpeg": {"kind": "svs", "codec": "jpeg"},
        "svs-jpeg2000": {"kind": "svs", "codec": "jpeg2000"},
        "bigtiff-zstd": {"kind": "tiff", "codec": "zstd", "bigtiff": True},
        "ome-jpeg": {"kind": "ome", "codec": "jpeg"},
        "tiff-none": {"kind": "tiff", "codec": "none"},
    }
    for name, layout in layouts.items():
        write_slide(folder / f"{name}.tiff", 900, 1300, levels=2, seed=len(name), **layout)
    return open_store(folder)


def small_shards(address: str, **changes: Any) -> ConvertOptions:
    """Options that cut a small slide into many regions, so the quad-tree runs on Dask."""
    settings: dict[str, Any] = {
        "chunk": 64,
        "shard": 256,
        "min_level_side": 100,
        "dask_address": address,
    }
    return ConvertOptions(**{**settings, **changes})


def level0(store: Store, key: str) -> np.ndarray:
    with store.open_read(key) as stream, tifffile.TiffFile(stream) as tif:
        return np.moveaxis(tif.series[0].levels[0].asarray(), -1, 0)


def open_pyramid(store: Store, key: str, version: str = "0.5") -> zarr.Group:
    return zarr.open_group(
        store.zarr_store(key, read_only=True), mode="r", zarr_format=3 if version == "0.5" else 2
    )


def pixels(group: zarr.Group, level: int) -> np.ndarray:
    array = group[str(level)]
    assert isinstance(array, zarr.Array)
    return np.asarray(array[...])


def attributes(group: zarr.Group) -> dict[str, Any]:
    return dict(group.attrs.asdict())


def assert_pyramid_pixels(group: zarr.Group, expected: np.ndarray, levels: int) -> None:
    """Level 0 equals the source pixel for pixel; each level is the 2x2 mean of the one above."""
    for level in range(levels):
        stored = pixels(group, level)
        assert np.array_equal(stored, expected), f"level {level} differs"
        expected = reference_mean(expected)
    assert str(levels) not in group


def all_text(store: Store, key: str) -> str:
    return "\n".join(
        store.read_bytes(info.key).decode()
        for info in store.list(key)
        if info.key.endswith(("json", ".zattrs", ".zarray", ".zgroup"))
    )


def test_real_slide_to_ngff_05(tmp_path: Path) -> None:
    slide = real_slide()
    source, target = open_store(slide.parent), open_store(tmp_path / "research")
    seen: list[tuple[int, int]] = []
    frozen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        frozen.append(gc.get_freeze_count())

    result = convert_slide(
        source, slide.name, target, "pyramids/cmu.ome.zarr", ConvertOptions(), progress
    )
    assert min(frozen) > 0 and gc.get_freeze_count() == 0, "older objects frozen only meanwhile"
    assert not result.skipped and result.levels == 3 and result.shape == (2967, 2220)
    assert result.mpp == pytest.approx(0.499) and result.bytes_raw == 3 * 2967 * 2220
    assert seen[-1] == (len(seen), len(seen))
    group = open_pyramid(target, "pyramids/cmu.ome.zarr")
    assert_pyramid_pixels(group, level0(source, slide.name), 3)
    ImageV05.from_zarr(group)
    ome = attributes(group)["ome"]
    multiscale = ome["multiscales"][0]
    assert [axis["name"] for axis in multiscale["axes"]] == ["c", "y", "x"]
    assert multiscale["axes"][1] == {"name": "y", "type": "space", "unit": "micrometer"}
    transforms = [d["coordinateTransformations"] for d in multiscale["datasets"]]
    assert [t[0]["scale"] for t in transforms] == [[1.0, s, s] for s in (0.499, 0.998, 1.996)]
    assert [t[1]["translation"] for t in transforms] == [[0.0, t, t] for t in (0.0, 0.2495, 0.7485)]
    assert [c["color"] for c in ome["omero"]["channels"]] == ["FF0000", "00FF00", "0000FF"]
    assert ome["omero"]["channels"][0]["window"] == {
        "min": 0.0,
        "max": 255.0,
        "start": 0.0,
        "end": 255.0,
    }
    array = group["0"]
    assert isinstance(array, zarr.Array) and isinstance(array.metadata, ArrayV3Metadata)
    assert array.metadata.dimension_names == ("c", "y", "x")
    assert array.chunks == (3, 512, 512) and array.shards == (3, 4096, 4096)
    inner = target.read_json("pyramids/cmu.ome.zarr/0/zarr.json")["codecs"][0]["configuration"]
    assert inner["codecs"][0] == {"name": "transpose", "configuration": {"order": [1, 2, 0]}}
    shard = target.read_bytes("pyramids/cmu.ome.zarr/0/c/0/0/0")
    offset, nbytes = np.frombuffer(shard[-(8 * 8 * 16 + 4) :][:16], "<u8").tolist()
    first = np.frombuffer(zstd_decode(shard[offset : offset + nbytes]), np.uint8)
    expected = level0(source, slide.name)[:, :512, :512]
    assert np.array_equal(first.reshape(512, 512, 3), expected.transpose(1, 2, 0)), "stored y, x, c"
    record = attributes(group)["mira"]
    assert record["source_sha256"] == source.sha256(slide.name) == result.source_sha256
    assert record["slide"] == {
        "format": "aperio-svs",
        "vendor": "Aperio",
        "objective_power": 20.0,
        "mpp_x": 0.499,
        "mpp_y": 0.499,
    }
    assert record["options"]["codec"] == "zstd" and record["mira_version"]
    text = all_text(target, "pyramids/cmu.ome.zarr")
    for identifier in ("CMU-1", "12/29/09", "09:59:15", "b414003d", "CPAPERIOCS", "ImageID"):
        assert identifier not in text
    assert len(list(target.list("pyramids/cmu.ome.zarr"))) == 7, "3 arrays, 3 shards, 1 root"


@pytest.mark.parametrize(
    "name", ["svs-jpeg", "svs-jpeg2000", "bigtiff-zstd", "ome-jpeg", "tiff-none"]
)
def test_generated_slides_on_dask(
    slides: Store, tmp_path: Path, dask_address: str, name: str
) -> None:
    target = open_store(tmp_path / "out")
    result = convert_slide(slides, f"{name}.tiff", target, "p.ome.zarr", small_shards(dask_address))
    assert result.levels == 5 and result.mpp == pytest.approx(0.25)
    group = open_pyramid(target, "p.ome.zarr")
    assert_pyramid_pixels(group, level0(slides, f"{name}.tiff"), 5)
    ImageV05.from_zarr(group)
    assert not [v for v in PHI_FIELDS.values() if v in all_text(target, "p.ome.zarr")]


def test_ngff_04_is_zarr_v2_without_shards(
    slides: Store, tmp_path: Path, dask_address: str
) -> None:
    target = open_store(tmp_path / "out")
    options = small_shards(dask_address, ngff_version="0.4")
    convert_slide(slides, "svs-jpeg.tiff", target, "p.ome.zarr", options)
    group = open_pyramid(target, "p.ome.zarr", "0.4")
    assert_pyramid_pixels(group, level0(slides, "svs-jpeg.tiff"), 5)
    ImageV04.from_zarr(group)
    assert attributes(group)["multiscales"][0]["version"] == "0.4" and "omero" in attributes(group)
    zarray = target.read_json("p.ome.zarr/0/.zarray")
    assert zarray["chunks"] == [3, 64, 64] and zarray["dimension_separator"] == "/"
    assert zarray["compressor"]["id"] == "zstd"
    assert target.exists("p.ome.zarr/0/0/13/20") and not target.exists("p.ome.zarr/zarr.json")
    assert read_completion_record(target, "p.ome.zarr") is not None


def test_grey_16_bit_slide(tmp_path: Path) -> None:
    image = np.random.default_rng(5).integers(0, 65536, (1500, 1100), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "grey.tiff", image, tile=(128, 128), compression="zstd")
    target = open_store(tmp_path / "out")
    result = convert_slide(
        open_store(tmp_path), "grey.tiff", target, "p.ome.zarr", ConvertOptions()
    )
    assert result.levels == 2 and result.mpp is None
    group = open_pyramid(target, "p.ome.zarr")
    assert_pyramid_pixels(group, image[np.newaxis], 2)
    ImageV05.from_zarr(group)
    ome = attributes(group)["ome"]
    assert [c["label"] for c in ome["omero"]["channels"]] == ["gray"]
    assert ome["omero"]["channels"][0]["window"]["max"] == 65535.0
    assert "unit" not in ome["multiscales"][0]["axes"][1], "no physical size: pixel units"


@pytest.mark.parametrize("codec", ["blosc-zstd", "lz4", "gzip", "none"])
def test_other_lossless_codecs(slides: Store, tmp_path: Path, codec: str) -> None:
    target = open_store(tmp_path / "out")
    convert_slide(
        slides, "ome-jpeg.tiff", target, "p.ome.zarr", ConvertOptions(codec=codec, codec_level=3)
    )
    group = open_pyramid(target, "p.ome.zarr")
    assert np.array_equal(pixels(group, 0), level0(slides, "ome-jpeg.tiff"))
    names = [
        c["name"]
        for c in target.read_json("p.ome.zarr/0/zarr.json")["codecs"][0]["configuration"]["codecs"]
    ]
    assert (
        names
        == {
            "blosc-zstd": ["transpose", "bytes", "blosc"],
            "lz4": ["transpose", "bytes", "blosc"],
            "gzip": ["transpose", "bytes", "gzip"],
            "none": ["transpose", "bytes"],
        }[codec]
    )


def test_invalid_options_fail_before_any_write(slides: Store, tmp_path: Path) -> None:
    target = open_store(tmp_path / "out")
    for options in (
        ConvertOptions(codec="jpeg-xl"),
        ConvertOptions(shard=1000),
        ConvertOptions(chunk=100),
    ):
        with pytest.raises(InvalidInput):
            convert_slide(slides, "svs-jpeg.tiff", target, "p.ome.zarr", options)
    assert not list(target.list("p.ome.zarr"))


@pytest.mark.s3
def test_s3_source_and_target(slides: Store, s3_store: Store, dask_address: str) -> None:
    s3_store.write_bytes("slides/a.tiff", slides.read_bytes("svs-jpeg.tiff"))
    result = convert_slide(
        s3_store,
        "slides/a.tiff",
        s3_store,
        "pyramids/a.ome.zarr",
        small_shards(dask_address, shard=512),
    )
    group = zarr.open_group(s3_store.zarr_store("pyramids/a.ome.zarr", read_only=True), mode="r")
    assert_pyramid_pixels(group, level0(slides, "svs-jpeg.tiff"), result.levels)
    ImageV05.from_zarr(group)
    keys = [info.key for info in s3_store.list("pyramids/a.ome.zarr")]
    assert len(keys) == 1 + result.levels + 6 + 2 + 1 + 1 + 1, "whole shards, not chunks"
    record = read_completion_record(s3_store, "pyramids/a.ome.zarr")
    assert record is not None and record.source_sha256 == result.source_sha256
    same = small_shards(dask_address, shard=512)
    again = convert_slide(s3_store, "slides/a.tiff", s3_store, "pyramids/a.ome.zarr", same)
    assert again.skipped


@pytest.mark.s3
def test_an_s3_outage_during_conversion_is_a_transient_error(
    slides: Store, s3_server: SeaweedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The S3 server drops away after the first region: the conversion fails with mira's
    ``TransientStoreError`` (which Prefect retries, and the CLI prints as one line), not with
    botocore's ``EndpointConnectionError`` from deep inside zarr.

    It runs on a cluster of its own: region tasks still running when the conversion gives up
    keep retrying the dead endpoint, and on the module's shared cluster they held up the next
    test's tasks for minutes.
    """
    from storage import errors

    monkeypatch.setattr(errors, "RETRY_BASE_SECONDS", 0.01)
    with dask_client(workers=1) as client, Relay(s3_server.config) as relay:
        dask_address = str(client.scheduler_info()["address"])
        target = open_store(f"s3://mira-plain/t-{uuid.uuid4().hex[:12]}", relay.config)
        with pytest.raises(TransientStoreError, match=r"p\.ome\.zarr"):
            convert_slide(
                slides,
                "svs-jpeg.tiff",
                target,
                "p.ome.zarr",
                small_shards(dask_address, shard=512),
                lambda done, total: relay.cut(),
            )


def snapshot(store: Store, prefix: str) -> dict[str, tuple[str | None, bytes]]:
    return {info.key: (info.etag, store.read_bytes(info.key)) for info in store.list(prefix)}


def test_current_pyramid_is_skipped_and_untouched(slides: Store, tmp_path: Path) -> None:
    target = open_store(tmp_path / "out")
    first = convert_slide(slides, "svs-jpeg.tiff", target, "p.ome.zarr", ConvertOptions())
    before = snapshot(target, "p.ome.zarr")
    again = convert_slide(slides, "svs-jpeg.tiff", target, "p.ome.zarr", ConvertOptions())
    assert (
        again.skipped
        and again.source_sha256 == first.source_sha256
        and again.levels == first.levels
    )
    assert snapshot(target, "p.ome.zarr") == before, "nothing rewritten"
    by_hash = convert_slide(
        slides,
        "svs-jpeg.tiff",
        target,
        "p.ome.zarr",
        ConvertOptions(),
        source_sha256=first.source_sha256,
    )
    assert by_hash.skipped


def test_changed_source_replaces_the_pyramid(slides: Store, tmp_path: Path) -> None:
    research = open_store(tmp_path / "research")
    research.write_bytes("slides/s.tiff", slides.read_bytes("svs-jpeg.tiff"))
    first = convert_slide(
        research, "slides/s.tiff", research, "pyramids/s.ome.zarr", ConvertOptions()
    )
    research.write_bytes("slides/s.tiff", slides.read_bytes("ome-jpeg.tiff"))
    second = convert_slide(
        research, "slides/s.tiff", research, "pyramids/s.ome.zarr", ConvertOptions()
    )
    assert not second.skipped and second.source_sha256 != first.source_sha256
    group = open_pyramid(research, "pyramids/s.ome.zarr")
    assert np.array_equal(pixels(group, 0), level0(slides, "ome-jpeg.tiff"))
    assert attributes(group)["mira"]["slide"]["format"] == "ome-tiff"


def test_convert_pending_slides(slides: Store, tmp_path: Path) -> None:
    research = open_store(tmp_path / "research")
    for name in ("a", "b"):
        research.write_bytes(
            f"slides/{name}.tiff", slides.read_bytes(f"{'svs' if name == 'a' else 'ome'}-jpeg.tiff")
        )
    research.write_bytes("slides/readme.txt", b"not a slide")
    options = ConvertOptions()
    first = convert_pending_slides(research, options)
    assert [(r.source_key, r.pyramid_key, r.skipped) for r in first] == [
        ("slides/a.tiff", "pyramids/a.ome.zarr", False),
        ("slides/b.tiff", "pyramids/b.ome.zarr", False),
    ]
    assert all(r.skipped for r in convert_pending_slides(research, options))
    research.write_bytes("slides/b.tiff", slides.read_bytes("bigtiff-zstd.tiff"))
    research.delete("pyramids/a.ome.zarr/zarr.json")  # no completion record: treated as absent
    third = {r.source_key: r.skipped for r in convert_pending_slides(research, options)}
    assert third == {"slides/a.tiff": False, "slides/b.tiff": False}
    b = open_pyramid(research, "pyramids/b.ome.zarr")
    assert np.array_equal(pixels(b, 0), level0(slides, "bigtiff-zstd.tiff"))
    assert read_completion_record(research, "pyramids/a.ome.zarr") is not None


KILLER = """
import os, signal, sys
from storage import open_store
from tasks.wsi.convert import ConvertOptions, convert_slide

def die_after(done: int, total: int) -> None:
    print(f"{done}/{total}", flush=True)
    if done == int(sys.argv[3]):
        # The client dies mid-conversion; its workers die with it (they watch their parent).
        os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    options = ConvertOptions(chunk=64, shard=128, min_level_side=100, ngff_version=sys.argv[4], workers=2)
    convert_slide(open_store(sys.argv[1]), "s.tiff", open_store(sys.argv[2]), "p.ome.zarr", options, die_after)
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_resume_after_kill_gives_the_same_pyramid(
    slides: Store, tmp_path: Path, dask_address: str, version: Literal["0.5", "0.4"]
) -> None:
    source = open_store(tmp_path / "source")
    source.write_bytes("s.tiff", slides.read_bytes("svs-jpeg.tiff"))
    killed, clean = open_store(tmp_path / "killed"), open_store(tmp_path / "clean")
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "source"),
            str(tmp_path / "killed"),
            "40",
            version,
        ],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        start_new_session=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == -9, run.stderr[-2000:]
    full_total = int(run.stdout.split()[-1].split("/")[1])
    assert read_completion_record(killed, "p.ome.zarr") is None, "a killed run publishes nothing"
    assert len(list(killed.list("p.ome.zarr"))) > 10, "it had written part of the pyramid"
    # What a kill in the middle of a write leaves: a store temporary file, a zarr one.
    level0 = tmp_path / "killed" / "p.ome.zarr" / "0"
    (level0 / f"{TEMP_MARK}cut-short.{'0' * 32}").write_bytes(b"half a shard")
    (level0 / f"zarr.{'ab' * 16}.partial").write_bytes(b"half a document")

    options = ConvertOptions(
        chunk=64, shard=128, min_level_side=100, ngff_version=version, dask_address=dask_address
    )
    totals: list[int] = []
    resumed = convert_slide(
        source, "s.tiff", killed, "p.ome.zarr", options, lambda d, t: totals.append(t)
    )
    assert not resumed.skipped and totals[-1] < full_total, "the rerun skipped finished regions"
    convert_slide(source, "s.tiff", clean, "p.ome.zarr", options)

    a, b = snapshot(killed, "p.ome.zarr"), snapshot(clean, "p.ome.zarr")
    assert sorted(a) == sorted(b), "no stray objects (partial writes) remain"
    on_disk = {
        path.relative_to(tmp_path / "killed").as_posix()
        for path in (tmp_path / "killed" / "p.ome.zarr").rglob("*")
        if path.is_file()
    }
    assert on_disk == set(a), "no temporary files left behind either"
    assert all(a[key][1] == b[key][1] for key in a), "every object identical"
    ga, gb = open_pyramid(killed, "p.ome.zarr", version), open_pyramid(clean, "p.ome.zarr", version)
    for level in range(resumed.levels):
        assert np.array_equal(pixels(ga, level), pixels(gb, level))
    assert json.dumps(attributes(ga), sort_keys=True) == json.dumps(attributes(gb), sort_keys=True)
