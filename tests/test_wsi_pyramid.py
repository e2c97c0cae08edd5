"""Pyramid geometry, the 2x2 mean, and shards written by hand that zarr reads back."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import TransposeCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from mira.errors import InvalidInput
from tasks.wsi.ngff import region_keys
from tasks.wsi.pyramid import (
    CODEC_NAMES,
    INTERLEAVED,
    BufferPool,
    ChunkCodec,
    PyramidPlan,
    RegionEncoder,
    assemble_chunk,
    chunks_from_planar,
    downsample_mean,
    planar_from_chunks,
    region_shape,
)
from tasks.wsi.regions import plan_region_tasks


def reference_mean(image: np.ndarray) -> np.ndarray:
    """The documented rule, written plainly: edge-replicate odd sides, 2x2 mean, half up."""
    _, h, w = image.shape
    padded = np.pad(image.astype(np.uint64), ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    total = (
        padded[:, 0::2, 0::2]
        + padded[:, 1::2, 0::2]
        + padded[:, 0::2, 1::2]
        + padded[:, 1::2, 1::2]
    )
    return ((total + 2) // 4).astype(image.dtype)


def assembled(
    plan: PyramidPlan, level: int, row: int, col: int, children: dict[tuple[int, int], np.ndarray]
) -> np.ndarray:
    """A whole region of ``level`` from its children's quarters, chunk by chunk."""
    region = np.full(region_shape(plan, level, row, col), 255, plan.dtype)  # dirty, as reused
    for cy in range(region.shape[0]):
        for cx in range(region.shape[1]):
            assemble_chunk(plan, level, row, col, children, cy, cx, region[cy, cx])
    return region


def encode_region(
    encoder: RegionEncoder,
    chunks: np.ndarray,
    lanes: list[int] | None = None,
    pool: ThreadPoolExecutor | None = None,
) -> None:
    """Every chunk of a chunk-major region in raster order: lane ``k`` takes the next
    ``lanes[k]`` chunks (all in lane 0 by default), each lane on ``pool`` if given."""
    positions = [(cy, cx) for cy in range(chunks.shape[0]) for cx in range(chunks.shape[1])]
    edges = [0, *itertools.accumulate(lanes or [len(positions)])]

    def add(lane: int) -> None:
        for cy, cx in positions[edges[lane] : edges[lane + 1]]:
            encoder.add(cy, cx, chunks[cy, cx], lane)

    for _ in (pool.map if pool else map)(add, range(len(edges) - 1)):
        pass


def test_levels_stop_at_min_side() -> None:
    plan = PyramidPlan.for_slide(2967, 2220, 3, "uint8", 512, 4096, 1024)
    assert plan.shapes == ((2967, 2220), (1484, 1110), (742, 555))
    assert plan.top == 0 and plan.grid(0) == (1, 1)
    big = PyramidPlan.for_slide(17000, 20000, 3, "uint8", 512, 4096, 1024)
    assert big.levels == 6 and big.grid(0) == (5, 5) and big.top == 3
    assert PyramidPlan.for_slide(800, 600, 3, "uint8", 512, 4096, 1024).levels == 1


@pytest.mark.parametrize(("chunk", "shard"), [(500, 4096), (512, 1000), (512, 256), (8, 64)])
def test_bad_chunk_or_shard_is_invalid_input(chunk: int, shard: int) -> None:
    with pytest.raises(InvalidInput):
        PyramidPlan.for_slide(4000, 4000, 3, "uint8", chunk, shard, 1024)


def test_unknown_codec_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="unknown codec"):
        ChunkCodec("jpeg-xl")


@settings(max_examples=80, deadline=None)
@given(
    height=st.integers(1, 140),
    width=st.integers(1, 140),
    chunk=st.sampled_from([16, 32, 64]),
    samples=st.sampled_from([1, 3, 4, 5]),
    dtype=st.sampled_from(["uint8", "uint16", "uint32"]),
    seed=st.integers(0, 2**16),
)
def test_chunked_mean_equals_reference(
    height: int, width: int, chunk: int, samples: int, dtype: str, seed: int
) -> None:
    top = np.iinfo(dtype).max
    image = np.random.default_rng(seed).integers(0, top, (samples, height, width), dtype=dtype)
    chunks = chunks_from_planar(image, chunk)
    assert chunks.shape[2:] == (chunk, chunk, samples), "chunks are interleaved"
    assert np.array_equal(planar_from_chunks(chunks, height, width), image)
    quarters = downsample_mean(chunks, height, width)
    half = ((height + 1) // 2, (width + 1) // 2)
    plan = PyramidPlan((half,), samples, dtype, chunk, 16 * chunk)  # one shard holds the level
    merged = assembled(plan, 0, 0, 0, {(0, 0): quarters})
    assert np.array_equal(planar_from_chunks(merged, *half), reference_mean(image))
    beyond = merged.copy()
    beyond_planar = beyond.transpose(4, 0, 2, 1, 3).reshape(samples, merged.shape[0] * chunk, -1)
    beyond_planar[:, : half[0], : half[1]] = 0
    assert not beyond_planar.any(), "padding beyond the level stays 0"


def test_mean_of_uint16_and_of_constant_regions() -> None:
    image = np.random.default_rng(1).integers(0, 65536, (1, 33, 47), dtype=np.uint16)
    quarters = downsample_mean(chunks_from_planar(image, 16), 33, 47)
    plan = PyramidPlan(((17, 24),), 1, "uint16", 16, 64)
    merged = assembled(plan, 0, 0, 0, {(0, 0): quarters})
    assert np.array_equal(planar_from_chunks(merged, 17, 24), reference_mean(image))
    flat = np.full((3, 31, 31), 201, np.uint8)
    assert (downsample_mean(chunks_from_planar(flat, 16), 31, 31)[0, 0] == 201).all()


def test_mean_is_not_nearest_neighbour() -> None:
    image = np.zeros((1, 2, 2), np.uint8)
    image[0, 1, 1] = 255  # nearest neighbour would give 0
    assert downsample_mean(chunks_from_planar(image, 16), 2, 2)[0, 0, 0, 0, 0] == 64


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_hand_written_shards_read_back_with_zarr(tmp_path: Path, name: str) -> None:
    codec = ChunkCodec(name, 1 if name != "gzip" else 6)
    plan = PyramidPlan(((150, 100),), 3, "uint8", 32, 64)
    compressor = codec.zarr3_compressor()
    store = zarr.storage.LocalStore(tmp_path / "a")
    array = zarr.create_array(
        store,
        shape=(3, 150, 100),
        dtype="uint8",
        chunks=(3, 32, 32),
        shards=(3, 64, 64),
        compressors=[compressor] if compressor is not None else None,
        filters=[TransposeCodec(order=INTERLEAVED)],
        fill_value=0,
    )
    image = np.random.default_rng(7).integers(0, 256, (3, 150, 100), dtype=np.uint8)
    prototype = default_buffer_prototype()
    for row in range(3):
        for col in range(2):
            y0, x0, h, w = plan.region(0, row, col)
            chunks = chunks_from_planar(image[:, y0 : y0 + h, x0 : x0 + w], 32)
            (key,) = region_keys(plan, "0.5", 0, row, col)
            encoder = RegionEncoder(plan, codec)
            encode_region(encoder, chunks)
            data = encoder.shard()
            sync(store.set(key.removeprefix("0/"), prototype.buffer.from_array_like(data)))
    assert np.array_equal(array[:], image)


def test_zarr_v2_chunk_objects_read_back(tmp_path: Path) -> None:
    codec = ChunkCodec("zstd", 1)
    store = zarr.storage.LocalStore(tmp_path / "a")
    array = zarr.create_array(
        store,
        shape=(3, 50, 70),
        dtype="uint8",
        chunks=(3, 32, 32),
        compressors=codec.numcodec(),
        zarr_format=2,
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
    image = np.random.default_rng(8).integers(0, 256, (3, 50, 70), dtype=np.uint8)
    prototype = default_buffer_prototype()
    encoder = RegionEncoder(PyramidPlan(((50, 70),), 3, "uint8", 32, 64), codec, planar=True)
    encode_region(encoder, chunks_from_planar(image, 32))
    for (cy, cx), data in encoder.chunk_objects().items():
        sync(store.set(f"0/{cy}/{cx}", prototype.buffer.from_bytes(data)))
    assert np.array_equal(array[:], image)


def test_tasks_form_a_quad_tree_in_z_order() -> None:
    plan = PyramidPlan.for_slide(1000, 700, 3, "uint8", 64, 128, 100)
    tasks = plan_region_tasks(plan, "0.5", set())
    leaves = [(t.row, t.col) for t in tasks if t.kind == "source"]
    rows, cols = plan.grid(0)
    assert sorted(leaves) == [(r, c) for r in range(rows) for c in range(cols)]
    assert leaves[:4] == [(0, 0), (0, 1), (1, 0), (1, 1)], "siblings run together"
    for index, task in enumerate(tasks):
        assert all(child < index for child in task.children), "children come first"
        if task.kind == "combine":
            assert len(task.children) == len(plan.children(task.level, task.row, task.col))
    roots = [t for t in tasks if t.level == plan.top]
    assert len(roots) == 1 and roots[0] is tasks[-1]


def test_written_regions_are_reloaded_not_recomputed() -> None:
    plan = PyramidPlan.for_slide(1000, 700, 3, "uint8", 64, 128, 100)
    first_two = set(region_keys(plan, "0.5", 0, 0, 0) + region_keys(plan, "0.5", 0, 0, 1))
    tasks = plan_region_tasks(plan, "0.5", first_two)
    fresh = plan_region_tasks(plan, "0.5", set())
    assert (
        len([t for t in tasks if t.kind == "source"])
        == len([t for t in fresh if t.kind == "source"]) - 2
    )
    assert {(t.row, t.col) for t in tasks if t.kind == "reload"} == {(0, 0), (0, 1)}
    parent = {(t.level, t.row, t.col) for t in fresh if t.kind == "combine"} & {(1, 0, 0)}
    assert parent, "the parent of the written regions is still computed"
    everything = {key for t in fresh for key in region_keys(plan, "0.5", t.level, t.row, t.col)}
    everything |= {
        key for level in range(plan.levels) for key in region_keys(plan, "0.5", level, 0, 0)
    }
    assert plan_region_tasks(plan, "0.5", everything) == []


def test_buffer_pool_reuses_given_back_buffers() -> None:
    pool = BufferPool()
    first = pool.take("region", (2, 3, 4), np.uint16)
    assert first.shape == (2, 3, 4) and first.dtype == np.uint16 and first.flags.c_contiguous
    held = pool.take("region", (2, 3, 4), np.uint16)
    assert not np.shares_memory(first, held), "a lent buffer is not lent twice"
    pool.give(first)
    smaller = pool.take("region", (5, 4), np.uint8)
    assert np.shares_memory(smaller, first), "a given-back buffer serves the next take"
    pool.give(smaller)
    bigger = pool.take("region", (100,), np.uint8)
    assert not np.shares_memory(bigger, first), "too small: a new one replaces it"
    pool.give(bigger)
    assert np.shares_memory(pool.take("region", (100,), np.uint8), bigger)
    other = pool.take("quarters", (100,), np.uint8)
    assert not np.shares_memory(other, bigger), "kinds do not mix"
    pool.give(np.zeros(100, np.uint8))  # not lent by this pool (a copy from elsewhere): ignored
    with pytest.raises(RuntimeError), pool.borrow("shard", (10,), np.uint8) as borrowed:
        raise RuntimeError("a failing task")
    assert np.shares_memory(pool.take("shard", (10,), np.uint8), borrowed), "given back anyway"


def test_mean_and_shard_into_given_buffers() -> None:
    image = np.random.default_rng(3).integers(0, 256, (3, 64, 96), dtype=np.uint8)
    chunks = chunks_from_planar(image, 32)
    out = np.full((2, 3, 16, 16, 3), 9, np.uint8)
    assert downsample_mean(chunks.copy(), 64, 96, out) is out
    assert np.array_equal(out, downsample_mean(chunks.copy(), 64, 96))
    plan = PyramidPlan(((64, 96),), 3, "uint8", 32, 128)
    scratch = np.empty(RegionEncoder.bound(plan, 6), np.uint8)
    direct = RegionEncoder(plan, ChunkCodec(), out=scratch)
    encode_region(direct, chunks)
    shard = direct.shard()
    assert np.shares_memory(shard, scratch)
    with ThreadPoolExecutor(2) as pool:  # encoded apart, on threads, then joined
        pieces = RegionEncoder(plan, ChunkCodec())
        encode_region(pieces, chunks, [1] * 6, pool)  # one chunk per lane: any thread adds
    assert np.array_equal(shard, pieces.shard())
    with pytest.raises(ValueError, match="too small"):
        encode_region(RegionEncoder(plan, ChunkCodec(), out=scratch[:100]), chunks)


@pytest.mark.parametrize("lanes", [[1, 1, 1, 1, 1, 1], [4, 2], [1, 3, 2]])
def test_lanes_encode_at_once_into_one_buffer(lanes: list[int]) -> None:
    """Threads encode their lanes into their own parts of one buffer; the shard comes out the
    same as chunks encoded one by one, and is a view of that buffer."""
    image = np.random.default_rng(4).integers(0, 256, (3, 64, 96), dtype=np.uint8)
    chunks = chunks_from_planar(image, 32)
    plan = PyramidPlan(((64, 96),), 3, "uint8", 32, 128)
    expected = RegionEncoder(plan, ChunkCodec())
    encode_region(expected, chunks)
    scratch = np.full(RegionEncoder.bound(plan, 6), 7, np.uint8)  # dirty, as a reused buffer
    with ThreadPoolExecutor(len(lanes)) as pool:
        laned = RegionEncoder(plan, ChunkCodec(), out=scratch, lanes=lanes)
        encode_region(laned, chunks, lanes, pool)
    shard = laned.shard()
    assert np.shares_memory(shard, scratch)
    assert np.array_equal(shard, expected.shard())
    assert np.array_equal(laned.shard(), shard), "packed once"
    assert laned.chunk_objects() == expected.chunk_objects()
    with pytest.raises(ValueError, match="too small"):
        RegionEncoder(plan, ChunkCodec(), out=scratch, lanes=[4, 3])


@pytest.mark.parametrize("side", [256, 200])
def test_chunks_assemble_the_childrens_quarters_in_place(side: int) -> None:
    """A region of level 2 made chunk by chunk from its four children's means is their planar
    means side by side, and 0 beyond."""
    plan = PyramidPlan.for_slide(2 * side, 2 * side, 3, "uint8", 32, 128, 16)
    rng = np.random.default_rng(side)
    children = {}
    _, _, height, width = plan.region(2, 0, 0)
    expected = np.zeros((3, height, width), np.uint8)
    for r, c in plan.children(2, 0, 0):
        y0, x0, h, w = plan.region(1, r, c)
        image = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
        children[r, c] = downsample_mean(chunks_from_planar(image, 32), h, w)
        top, left = y0 // 2, x0 // 2
        expected[:, top : top + (h + 1) // 2, left : left + (w + 1) // 2] = reference_mean(image)
    region = assembled(plan, 2, 0, 0, children)
    assert np.array_equal(planar_from_chunks(region, height, width), expected)
    padded = region.transpose(4, 0, 2, 1, 3).reshape(3, region.shape[0] * 32, -1)
    assert not padded[:, height:].any() and not padded[:, :, width:].any(), "0 beyond the level"
