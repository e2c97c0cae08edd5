"""The pixel side of a pyramid: its geometry, 2x2 mean downsampling, and whole-shard encoding.

mira writes chunk bytes itself instead of going through zarr-python's per-chunk codec pipeline
(which costs more than the codec on small chunks): a shard region is encoded chunk by chunk with
the same numcodecs codec the array metadata names, the chunks are concatenated with the sharding
codec's index (``(offset, nbytes)`` uint64 pairs, little endian, then their CRC32C, at the end),
and the whole shard is stored as one object. zarr (or any Zarr v3 reader) reads it back.

A chunk is held and stored interleaved, ``(chunk, chunk, c)``: the order JPEG decoders, OpenCV
and zstd work fastest in. The arrays are still ``(c, y, x)`` as NGFF requires: in Zarr v3 a
``transpose`` codec (order ``(1, 2, 0)``) maps each ``(c, y, x)`` chunk to the stored order, and
every v3 reader applies it. Zarr v2 has no such codec, so its chunks are transposed to planar
``(c, chunk, chunk)`` when encoded (``RegionEncoder(planar=True)``).
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

import cv2
import google_crc32c
import imagecodecs
import numcodecs
import numpy as np
from numpy.typing import NDArray

from mira.errors import InvalidInput

Pixels = NDArray[Any]
EMPTY_CHUNK = 2**64 - 1  # the sharding codec's marker for "chunk not stored"
CODEC_NAMES = ("zstd", "blosc-zstd", "blosc-lz4", "lz4", "gzip", "none")
CV2_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
INTERLEAVED = (1, 2, 0)  # the transpose codec's order: (c, y, x) chunks stored as (y, x, c)

# mira runs one region per core itself; OpenCV's own thread pool would only contend with that.
cv2.setNumThreads(1)


class BufferPool:
    """Scratch arrays reused by the region tasks of one process.

    A region is tens of MB; a fresh array of that size costs a page fault per 4 KiB on first
    touch, which measured as much as the codec work on the same bytes. Arrays are taken from the
    pool and given back once nothing reads them, so the pool never holds more buffers of a kind
    than were ever in use at once. Contents are undefined when taken. An array that is never
    given back is simply garbage collected.
    """

    def __init__(self) -> None:
        self._free: dict[str, list[NDArray[np.uint8]]] = {}
        self._lent: dict[int, tuple[str, NDArray[np.uint8]]] = {}
        self._lock = threading.Lock()

    def take(self, kind: str, shape: tuple[int, ...], dtype: Any) -> Pixels:
        """A C-contiguous array of ``shape`` and ``dtype``, backed by a reused buffer of ``kind``
        (a buffer too small for it is replaced by one that fits)."""
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        with self._lock:
            free = self._free.setdefault(kind, [])
            sizes = [candidate.nbytes for candidate in free]
            fitting = [index for index, size in enumerate(sizes) if size >= nbytes]
            buffer: NDArray[np.uint8] | None = None
            if fitting:
                buffer = free.pop(min(fitting, key=sizes.__getitem__))
            elif free:  # all too small: drop the smallest, the new one takes its place
                free.pop(sizes.index(min(sizes)))
        if buffer is None:
            buffer = np.empty(nbytes, np.uint8)
        array = buffer[:nbytes].view(dtype).reshape(shape)
        with self._lock:
            self._lent[id(array)] = (kind, buffer)
        # Forgotten arrays: drop the record with the array, so the buffer can be collected.
        weakref.finalize(array, self._forget, id(array), buffer)
        return array

    def give(self, array: Pixels) -> None:
        """Return an array from ``take``: its buffer serves the next ``take``. Nothing may read
        the array afterwards. Arrays the pool did not lend (a copy sent from another process)
        are ignored."""
        with self._lock:
            lent = self._lent.pop(id(array), None)
            if lent is not None:
                self._free.setdefault(lent[0], []).append(lent[1])

    @contextmanager
    def borrow(self, kind: str, shape: tuple[int, ...], dtype: Any) -> Iterator[Pixels]:
        """``take`` for the block, given back at its end."""
        array = self.take(kind, shape, dtype)
        try:
            yield array
        finally:
            self.give(array)

    def _forget(self, key: int, buffer: NDArray[np.uint8]) -> None:
        with self._lock:
            if key in self._lent and self._lent[key][1] is buffer:
                del self._lent[key]


BUFFERS = BufferPool()


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


def region_shape(plan: PyramidPlan, level: int, row: int, col: int) -> tuple[int, ...]:
    """A chunk-major region's shape, ``(chunks_down, chunks_across, chunk, chunk, c)``: each
    chunk interleaved, as stored."""
    _, _, height, width = plan.region(level, row, col)
    c = plan.chunk
    return (-(-height // c), -(-width // c), c, c, plan.samples)


def chunks_from_planar(planar: Pixels, chunk: int) -> Pixels:
    """Cut a planar ``(c, h, w)`` array into zero-padded chunk-major form."""
    c, h, w = planar.shape
    down, across = -(-h // chunk), -(-w // chunk)
    padded = np.zeros((c, down * chunk, across * chunk), planar.dtype)
    padded[:, :h, :w] = planar
    grid = padded.reshape(c, down, chunk, across, chunk).transpose(1, 3, 2, 4, 0)
    return np.ascontiguousarray(grid)


def planar_from_chunks(chunks: Pixels, height: int, width: int) -> Pixels:
    """The inverse of ``chunks_from_planar``: a planar ``(c, height, width)`` array."""
    down, across, size, _, c = chunks.shape
    planar = chunks.transpose(4, 0, 2, 1, 3).reshape(c, down * size, across * size)
    return np.ascontiguousarray(planar[:, :height, :width])


def downsample_mean(chunks: Pixels, height: int, width: int, out: Pixels | None = None) -> Pixels:
    """2x2 mean of a chunk-major region whose valid size is ``height x width``, rounded half up.

    Returns each chunk halved in place of the chunk, ``(down, across, chunk/2, chunk/2, c)``
    ("quarters"), which ``assemble_chunk`` re-chunks for the next level. Odd edges: a last odd
    row (column) is first copied into the padding beside it, so the last output row (column) is
    the mean of the one or two pixels that exist, not darkened by the padding; output beyond
    ``ceil(height/2) x ceil(width/2)`` stays 0. Interior regions are even-sized, so region-wise
    results equal a whole-level downsample. The region's padding is modified. The means go to
    ``out`` when given (a C-contiguous array of the quarters' shape).

    uint8 and uint16 go through OpenCV's area resize, whose exact 2x case is the rounded 2x2
    mean ``(a + b + c + d + 2) >> 2`` in SIMD code; the stacked chunks are one tall image of
    ``c`` channels for it, as no 2x2 block crosses two chunks (chunk sides are even).
    """
    size = chunks.shape[2]
    if height % 2:
        row, used = divmod(height, size)
        chunks[row, :, used] = chunks[row, :, used - 1]
    if width % 2:
        col, used = divmod(width, size)
        chunks[:, col, :, used] = chunks[:, col, :, used - 1]
    down, across, _, _, c = chunks.shape
    half = size // 2
    if chunks.dtype not in CV2_DTYPES or c > 4:
        means = _mean_wide(chunks.reshape(-1, 2, half, 2, c)).reshape(down, across, half, half, c)
        if out is None:
            return means
        out[...] = means
        return out
    image = np.ascontiguousarray(chunks).reshape(-1, size, c)
    quarters = np.empty((down, across, half, half, c), chunks.dtype) if out is None else out
    target = quarters.reshape(-1, half, c)  # a view: OpenCV writes the means into it
    means = cv2.resize(image, (half, target.shape[0]), dst=target, interpolation=cv2.INTER_AREA)
    if not np.shares_memory(means, target):
        target[...] = means.reshape(target.shape)
    return quarters


def _mean_wide(blocks: Pixels) -> Pixels:
    """2x2 blocks ``(n, 2, w, 2, c)`` -> ``(n, w, c)`` rounded means, in a wider integer type."""
    wide: Pixels = blocks.astype(np.uint64 if blocks.dtype.itemsize >= 4 else np.uint32)
    total = wide[:, 0, :, 0] + wide[:, 0, :, 1] + wide[:, 1, :, 0] + wide[:, 1, :, 1]
    return ((total + 2) // 4).astype(blocks.dtype)


def assemble_chunk(
    plan: PyramidPlan,
    level: int,
    row: int,
    col: int,
    children: dict[tuple[int, int], Pixels],
    cy: int,
    cx: int,
    out: Pixels,
) -> None:
    """Chunk ``(cy, cx)`` of a region of ``level``, ``(chunk, chunk, c)``, from its children's
    quarters by child ``(row, col)``: each of its four quadrants is one quarter block, or 0 where
    no child covers it."""
    size, half, half_shard = plan.chunk, plan.chunk // 2, plan.shard // 2
    for sy in (0, 1):
        y = cy * size + sy * half  # in the region
        for sx in (0, 1):
            x = cx * size + sx * half
            quarters = children.get((2 * row + y // half_shard, 2 * col + x // half_shard))
            qy, qx = (y % half_shard) // half, (x % half_shard) // half
            target = out[sy * half : (sy + 1) * half, sx * half : (sx + 1) * half]
            if quarters is not None and qy < quarters.shape[0] and qx < quarters.shape[1]:
                target[...] = quarters[qy, qx]
            else:
                target.fill(0)


class RegionEncoder:
    """Encodes the chunks of one region as they come (any order), then makes its objects.

    ``shard()`` is the whole Zarr v3 shard as one uint8 array: the encoded chunks, then the
    index of ``(offset, nbytes)`` uint64 pairs and its CRC32C (chunks of the shard's grid beyond
    the region, at the level's edge, are marked empty). ``chunk_objects()`` are the Zarr v2
    chunks by grid position. Chunks come interleaved, ``(chunk, chunk, c)``; ``planar`` stores
    them as ``(c, chunk, chunk)`` (Zarr v2).

    With zstd and an ``out`` buffer (``bound`` bytes), chunks are encoded straight into it and
    the shard is a view of ``out``: no per-chunk allocation, no second copy. ``lanes`` lets
    several threads encode at once: lane ``k`` (``add(..., lane=k)``, one thread at a time) gets
    its own part of ``out``, sized for ``lanes[k]`` chunks, and ``shard()`` moves each lane's
    bytes down behind the previous lane's. Without ``out`` (other codecs), ``add`` keeps each
    encoded chunk apart and may be called from any thread.
    """

    def __init__(
        self,
        plan: PyramidPlan,
        codec: ChunkCodec,
        out: NDArray[np.uint8] | None = None,
        planar: bool = False,
        lanes: Sequence[int] | None = None,
    ):
        self._plan, self._codec, self._planar = plan, codec, planar
        self._out = out if codec.name == "zstd" else None
        self._encode = codec.encoder()
        capacity = self._out.nbytes if self._out is not None else 0
        per_chunk = _zstd_bound(_chunk_bytes(plan))
        sizes = [count * per_chunk for count in lanes] if lanes else [capacity]
        self._starts = [sum(sizes[:k]) for k in range(len(sizes))]
        self._offsets = list(self._starts)  # each lane's next free byte in out
        self._ends = [start + size for start, size in zip(self._starts, sizes, strict=True)]
        if self._out is not None and self._ends[-1] > capacity:
            raise ValueError(f"RegionEncoder out of {capacity} bytes is too small for its lanes")
        self._placed: dict[tuple[int, int], tuple[int, int, int]] = {}  # lane, offset, length
        self._pieces: dict[tuple[int, int], bytes] = {}
        self._packed = False

    @staticmethod
    def bound(plan: PyramidPlan, chunks: int) -> int:
        """The ``out`` size that holds ``chunks`` encoded chunks of ``plan`` and the index."""
        per_side = plan.shard // plan.chunk
        return chunks * _zstd_bound(_chunk_bytes(plan)) + per_side * per_side * 16 + 4

    def add(self, cy: int, cx: int, chunk: Pixels, lane: int = 0) -> None:
        """Encode one chunk, ``(chunk, chunk, c)`` in any byte order, at grid position
        ``(cy, cx)``, into ``lane``."""
        if self._planar:
            chunk = np.ascontiguousarray(chunk.transpose(2, 0, 1))
        if self._out is None:
            self._pieces[cy, cx] = self._encode(chunk)
            return
        data = cast(Any, _little_endian(chunk))
        offset = self._offsets[lane]
        if self._ends[lane] - offset < _zstd_bound(chunk.nbytes):
            raise ValueError(f"RegionEncoder out of {self._out.nbytes} bytes is too small")
        target = cast(Any, self._out[offset : self._ends[lane]])
        written = len(imagecodecs.zstd_encode(data, level=self._codec.level, out=target))
        self._placed[cy, cx] = (lane, offset, written)
        self._offsets[lane] = offset + written

    def add_encoded(self, cy: int, cx: int, data: bytes) -> None:
        """Store bytes already in the array's codec (a copied JPEG tile) at ``(cy, cx)``; empty
        bytes leave the chunk absent (it reads as the fill value, 0)."""
        if self._out is not None:
            raise ValueError("RegionEncoder with an out buffer only encodes")
        if data:
            self._pieces[cy, cx] = data

    def shard(self) -> NDArray[np.uint8]:
        per_side = self._plan.shard // self._plan.chunk
        tail = per_side * per_side * 16 + 4
        index = np.full((per_side, per_side, 2), EMPTY_CHUNK, dtype="<u8")
        if self._out is not None:
            shard, size = self._out, self._pack()
            for (cy, cx), (_, offset, length) in self._placed.items():
                index[cy, cx] = (offset, length)
        else:
            size = sum(len(piece) for piece in self._pieces.values())
            shard, size = np.empty(size + tail, np.uint8), 0
            for (cy, cx), piece in sorted(self._pieces.items()):
                shard[size : size + len(piece)] = np.frombuffer(piece, np.uint8)
                index[cy, cx] = (size, len(piece))
                size += len(piece)
        if shard.nbytes < size + tail:
            raise ValueError(f"RegionEncoder out of {shard.nbytes} bytes is too small")
        index_bytes = index.tobytes()
        checksum = np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()
        shard[size : size + tail] = np.frombuffer(index_bytes + checksum, np.uint8)
        return shard[: size + tail]

    def _pack(self) -> int:
        """Move every lane's bytes down behind the previous lane's (once); returns the end."""
        assert self._out is not None
        if not self._packed:
            end = self._offsets[0]
            for lane in range(1, len(self._starts)):
                start, used = self._starts[lane], self._offsets[lane] - self._starts[lane]
                self._out[end : end + used] = self._out[start : start + used]  # memmove: end<=start
                self._offsets[lane] = end + used
                for position, (placed_lane, offset, length) in self._placed.items():
                    if placed_lane == lane:
                        self._placed[position] = (lane, offset - start + end, length)
                end += used
            self._packed = True
        return self._offsets[-1]

    def chunk_objects(self) -> dict[tuple[int, int], bytes]:
        if self._out is not None:
            return {
                position: self._out[offset : offset + length].tobytes()
                for position, (_, offset, length) in self._placed.items()
            }
        return dict(self._pieces)


def _chunk_bytes(plan: PyramidPlan) -> int:
    return plan.samples * plan.chunk * plan.chunk * np.dtype(plan.dtype).itemsize


def _zstd_bound(size: int) -> int:
    """ZSTD_compressBound: the largest frame zstd can make of ``size`` bytes."""
    small = (128 * 1024 - size) >> 11 if size < 128 * 1024 else 0
    return size + (size >> 8) + small
