"""The pixel side of a pyramid: its geometry, 2x2 mean downsampling, and whole-shard encoding.

mira writes chunk bytes itself instead of going through zarr-python's per-chunk codec pipeline
(which costs more than the codec on small chunks): a shard region is encoded chunk by chunk with
the same numcodecs codec the array metadata names, the chunks are concatenated with the sharding
codec's index (``(offset, nbytes)`` uint64 pairs, little endian, then their CRC32C, at the end),
and the whole shard is stored as one object. zarr (or any Zarr v3 reader) reads it back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Literal, cast

import google_crc32c
import imagecodecs
import numcodecs
import numpy as np
from numpy.typing import NDArray

from mira.errors import InvalidInput

Pixels = NDArray[Any]
EMPTY_CHUNK = 2**64 - 1  # the sharding codec's marker for "chunk not stored"
CODEC_NAMES = ("zstd", "blosc-zstd", "blosc-lz4", "lz4", "gzip", "none")
DOWNSAMPLE_BAND_ROWS = 512  # row pairs per step: 2 x 256 KiB of uint16 work, in L2 cache


@dataclass(frozen=True)
class ChunkCodec:
    """A lossless byte codec for chunks, named as in ``ConvertOptions.codec``.

    ``lz4`` means Blosc with LZ4 inside: Zarr v3 has no plain LZ4 codec that other readers know.
    """

    name: str = "zstd"
    level: int = 1

    def __post_init__(self) -> None:
        if self.name not in CODEC_NAMES:
            raise InvalidInput(
                f"unknown codec {self.name!r}: choose one of {', '.join(CODEC_NAMES)}"
            )

    def numcodec(self) -> Any:
        """The numcodecs codec that encodes chunks (and is the Zarr v2 compressor); None for raw."""
        if self.name == "zstd":
            return numcodecs.Zstd(level=self.level)
        if self.name in ("blosc-zstd", "blosc-lz4", "lz4"):
            cname = "zstd" if self.name == "blosc-zstd" else "lz4"
            return numcodecs.Blosc(
                cname=cname, clevel=self.level, shuffle=numcodecs.Blosc.NOSHUFFLE
            )
        if self.name == "gzip":
            return numcodecs.GZip(level=self.level)
        return None

    def encoder(self) -> Callable[[Pixels], bytes]:
        """Chunk (C-order, little endian) -> stored bytes. zstd goes through imagecodecs, which
        releases the GIL (chunks of one region encode in parallel); it writes the same standard
        zstd frames numcodecs reads."""
        if self.name == "zstd":
            level = self.level

            def zstd(chunk: Pixels) -> bytes:
                return bytes(imagecodecs.zstd_encode(cast(Any, _little_endian(chunk)), level=level))

            return zstd
        codec = self.numcodec()
        if codec is None:
            return lambda chunk: _little_endian(chunk).tobytes()
        return lambda chunk: bytes(codec.encode(_little_endian(chunk)))

    def zarr3_compressor(self) -> Any:
        """The same codec as a Zarr v3 ``bytes -> bytes`` codec for the array metadata."""
        from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

        if self.name == "zstd":
            return ZstdCodec(level=self.level)
        if self.name in ("blosc-zstd", "blosc-lz4", "lz4"):
            cname: Literal["zstd", "lz4"] = "zstd" if self.name == "blosc-zstd" else "lz4"
            return BloscCodec(cname=cname, clevel=self.level, shuffle="noshuffle", typesize=1)
        if self.name == "gzip":
            return GzipCodec(level=self.level)
        return None


def _little_endian(chunk: Pixels) -> Pixels:
    return np.ascontiguousarray(chunk.astype(chunk.dtype.newbyteorder("<"), copy=False))


@dataclass(frozen=True)
class PyramidPlan:
    """Shapes of every level and how each is cut into shard regions and chunks.

    Level ``k+1`` is level ``k`` averaged over 2x2 blocks, ``ceil(side / 2)`` on each side; levels
    stop once the longest side is at most ``min_level_side``. Work is cut into shard regions
    (``shard`` px squares): a region of level ``k+1`` is the downsampled 2x2 group of regions of
    level ``k``, so the pyramid is a quad-tree of regions.
    """

    shapes: tuple[tuple[int, int], ...]
    samples: int
    dtype: str
    chunk: int
    shard: int

    @classmethod
    def for_slide(
        cls,
        height: int,
        width: int,
        samples: int,
        dtype: str,
        chunk: int,
        shard: int,
        min_side: int,
    ) -> PyramidPlan:
        if chunk < 16 or chunk % 16:
            raise InvalidInput(f"chunk must be a positive multiple of 16 px, not {chunk}")
        if shard < chunk or shard % chunk:
            raise InvalidInput(f"shard ({shard}) must be a multiple of chunk ({chunk})")
        if min_side < 1:
            raise InvalidInput(f"min_level_side must be positive, not {min_side}")
        shapes = [(height, width)]
        while max(shapes[-1]) > min_side:
            h, w = shapes[-1]
            shapes.append(((h + 1) // 2, (w + 1) // 2))
        return cls(tuple(shapes), samples, dtype, chunk, shard)

    @property
    def levels(self) -> int:
        return len(self.shapes)

    @property
    def top(self) -> int:
        """The level whose regions are the roots of the work: the first that fits one shard.

        That region also computes every smaller level below it, in one final pass.
        """
        for level in range(self.levels):
            if self.grid(level) == (1, 1):
                return level
        return self.levels - 1

    def grid(self, level: int) -> tuple[int, int]:
        """Shard regions down and across ``level``."""
        h, w = self.shapes[level]
        return math.ceil(h / self.shard), math.ceil(w / self.shard)

    def region(self, level: int, row: int, col: int) -> tuple[int, int, int, int]:
        """``(y0, x0, height, width)`` of one shard region, clipped to the level."""
        h, w = self.shapes[level]
        y0, x0 = row * self.shard, col * self.shard
        return y0, x0, min(self.shard, h - y0), min(self.shard, w - x0)

    def children(self, level: int, row: int, col: int) -> list[tuple[int, int]]:
        """The regions of ``level - 1`` whose 2x2 mean makes this region (those that exist)."""
        rows, cols = self.grid(level - 1)
        return [
            (r, c)
            for r in (2 * row, 2 * row + 1)
            for c in (2 * col, 2 * col + 1)
            if r < rows and c < cols
        ]

    def array_shape(self, level: int) -> tuple[int, int, int]:
        return (self.samples, *self.shapes[level])


def empty_region(plan: PyramidPlan, level: int, row: int, col: int) -> Pixels:
    """A zeroed chunk-major region, ``(chunks_down, chunks_across, c, chunk, chunk)``."""
    _, _, height, width = plan.region(level, row, col)
    c = plan.chunk
    return np.zeros((-(-height // c), -(-width // c), plan.samples, c, c), plan.dtype)


def chunks_from_planar(planar: Pixels, chunk: int) -> Pixels:
    """Cut a planar ``(c, h, w)`` array into zero-padded chunk-major form."""
    c, h, w = planar.shape
    down, across = -(-h // chunk), -(-w // chunk)
    padded = np.zeros((c, down * chunk, across * chunk), planar.dtype)
    padded[:, :h, :w] = planar
    grid = padded.reshape(c, down, chunk, across, chunk).transpose(1, 3, 0, 2, 4)
    return np.ascontiguousarray(grid)


def planar_from_chunks(chunks: Pixels, height: int, width: int) -> Pixels:
    """The inverse of ``chunks_from_planar``: a planar ``(c, height, width)`` array."""
    down, across, c, size, _ = chunks.shape
    planar = chunks.transpose(2, 0, 3, 1, 4).reshape(c, down * size, across * size)
    return np.ascontiguousarray(planar[:, :height, :width])


def downsample_mean(chunks: Pixels, height: int, width: int) -> Pixels:
    """2x2 mean of a chunk-major region whose valid size is ``height x width``, rounded half up.

    Returns each chunk halved in place of the chunk, ``(down, across, c, chunk/2, chunk/2)``
    ("quarters"), which ``assemble_quarters`` re-chunks for the next level. Odd edges: a last odd
    row (column) is first copied into the padding beside it, so the last output row (column) is
    the mean of the one or two pixels that exist, not darkened by the padding; output beyond
    ``ceil(height/2) x ceil(width/2)`` stays 0. Interior regions are even-sized, so region-wise
    results equal a whole-level downsample. The region's padding is modified.
    """
    size = chunks.shape[-1]
    if height % 2:
        row, used = divmod(height, size)
        chunks[row, :, :, used, :] = chunks[row, :, :, used - 1, :]
    if width % 2:
        col, used = divmod(width, size)
        chunks[:, col, :, :, used] = chunks[:, col, :, :, used - 1]
    down, across, c = chunks.shape[:3]
    pairs = chunks.reshape(-1, 2, size)  # consecutive rows of the same chunk plane
    halves = _mean_of_pairs(pairs) if chunks.dtype == np.uint8 else _mean_of_pairs_wide(pairs)
    return halves.reshape(down, across, c, size // 2, size // 2)


def _mean_of_pairs_wide(pairs: Pixels) -> Pixels:
    wide: Pixels = pairs.astype(np.uint64 if pairs.dtype.itemsize >= 4 else np.uint32)
    total = wide[:, 0, 0::2] + wide[:, 0, 1::2] + wide[:, 1, 0::2] + wide[:, 1, 1::2]
    return ((total + 2) // 4).astype(pairs.dtype)


def _mean_of_pairs(pairs: Pixels) -> Pixels:
    """uint8 row pairs ``(n, 2, w)`` -> ``(n, w/2)`` means, in bands that stay in cache. Two
    neighbour pixels are read as one uint16, so every step is a contiguous vector operation (the
    sum of both bytes is the same in either byte order)."""
    words = pairs.view(np.uint16)
    out = np.empty((pairs.shape[0], pairs.shape[2] // 2), np.uint8)
    total = np.empty((DOWNSAMPLE_BAND_ROWS, out.shape[1]), np.uint16)
    part = np.empty_like(total)
    for start in range(0, words.shape[0], DOWNSAMPLE_BAND_ROWS):
        band = words[start : start + DOWNSAMPLE_BAND_ROWS]
        s, t = total[: len(band)], part[: len(band)]
        np.bitwise_and(band[:, 0], 0xFF, out=s)
        np.right_shift(band[:, 0], 8, out=t)
        s += t
        np.bitwise_and(band[:, 1], 0xFF, out=t)
        s += t
        np.right_shift(band[:, 1], 8, out=t)
        s += t
        s += 2
        s >>= 2
        np.copyto(out[start : start + len(band)], s, casting="unsafe")
    return out


def assemble_quarters(
    plan: PyramidPlan, level: int, row: int, col: int, children: list[tuple[int, int, Pixels]]
) -> Pixels:
    """A chunk-major region of ``level`` from its children's quarters ``(child_row, child_col,
    quarters)``: each quarter lands in one quadrant of one chunk."""
    region = empty_region(plan, level, row, col)
    size, half, half_shard = plan.chunk, plan.chunk // 2, plan.shard // 2
    down, across = region.shape[:2]
    for child_row, child_col, quarters in children:
        top, left = (child_row - 2 * row) * half_shard, (child_col - 2 * col) * half_shard
        for qy in range(quarters.shape[0]):
            cy, oy = divmod(top + qy * half, size)
            if cy >= down:
                continue
            for qx in range(quarters.shape[1]):
                cx, ox = divmod(left + qx * half, size)
                if cx < across:
                    region[cy, cx, :, oy : oy + half, ox : ox + half] = quarters[qy, qx]
    return region


def encode_shard(
    chunks: Pixels, plan: PyramidPlan, codec: ChunkCodec, pool: Executor | None = None
) -> Pixels:
    """A whole shard object for one region, as one uint8 array: encoded chunks, then the index
    and its CRC32C. Chunks of the shard's grid beyond the region (the level's edge) are marked
    empty. Without a pool, zstd encodes each chunk straight into the object (no second copy)."""
    per_side = plan.shard // plan.chunk
    positions = [(cy, cx) for cy in range(chunks.shape[0]) for cx in range(chunks.shape[1])]
    tail = per_side * per_side * 16 + 4  # the index: (offset, nbytes) uint64 pairs, then CRC32C
    if codec.name == "zstd" and pool is None:
        bound = _zstd_bound(chunks[0, 0].nbytes)
        shard = np.empty(len(positions) * bound + tail, np.uint8)
        lengths = []
        offset = 0
        for position in positions:
            chunk = cast(Any, _little_endian(chunks[position]))
            written = len(
                imagecodecs.zstd_encode(chunk, level=codec.level, out=cast(Any, shard[offset:]))
            )
            lengths.append(written)
            offset += written
    else:
        pieces = _encode_all(chunks, positions, codec, pool)
        lengths = [len(piece) for piece in pieces]
        shard = np.empty(sum(lengths) + tail, np.uint8)
        offset = 0
        for piece in pieces:
            shard[offset : offset + len(piece)] = np.frombuffer(piece, np.uint8)
            offset += len(piece)
    index = np.full((per_side, per_side, 2), EMPTY_CHUNK, dtype="<u8")
    starts = np.cumsum([0, *lengths[:-1]])
    for (cy, cx), start, length in zip(positions, starts, lengths, strict=True):
        index[cy, cx] = (start, length)
    index_bytes = index.tobytes()
    checksum = np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()
    shard[offset : offset + tail] = np.frombuffer(index_bytes + checksum, np.uint8)
    return shard[: offset + tail]


def _zstd_bound(size: int) -> int:
    """ZSTD_compressBound: the largest frame zstd can make of ``size`` bytes."""
    small = (128 * 1024 - size) >> 11 if size < 128 * 1024 else 0
    return size + (size >> 8) + small


def encode_chunk_objects(
    chunks: Pixels, codec: ChunkCodec, pool: Executor | None = None
) -> dict[tuple[int, int], bytes]:
    """Zarr v2 (no sharding): each chunk of the region as its own object, by grid position."""
    positions = [(cy, cx) for cy in range(chunks.shape[0]) for cx in range(chunks.shape[1])]
    return dict(zip(positions, _encode_all(chunks, positions, codec, pool), strict=True))


def _encode_all(
    chunks: Pixels, positions: list[tuple[int, int]], codec: ChunkCodec, pool: Executor | None
) -> list[bytes]:
    encode = codec.encoder()

    def one(position: tuple[int, int]) -> bytes:
        return encode(chunks[position])

    return list(pool.map(one, positions) if pool else map(one, positions))
