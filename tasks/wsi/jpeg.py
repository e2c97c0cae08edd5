"""JPEG passthrough: a slide's level-0 JPEG tiles stored as Zarr chunks, exactly as scanned.

``mira convert --codec jpeg`` copies each level-0 tile's JPEG stream into the pyramid instead of
decoding and re-encoding it: level 0 keeps the scanner's bytes (nothing is lost relative to the
scan, and it is several times smaller than a lossless copy), and the work left is the decoding
that the 2x2 means of level 1 need. Levels 1 and up are lossless (zstd) as always.

The chunks are read with the Zarr v3 codec ``imagecodecs_jpeg``, the name and configuration that
the ``imagecodecs-zarr`` package registers (Python 3.12+): its ``tables`` (the TIFF JPEGTables
that abbreviated tile streams need, base64) and its colour spaces. A level-0 array stores each
chunk as one tile, ``(tile, tile, c)`` after a ``transpose`` codec, so the array itself is
``(c, y, x)`` like every other level. ``JpegTileCodec`` is mira's own implementation of that
codec, registered with zarr on import and as a ``zarr.codecs`` entry point, so zarr reads these
pyramids wherever mira is installed, and where imagecodecs-zarr is.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import imagecodecs
import numpy as np
import tifffile
import zarr.registry
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import TransposeCodec

from mira.errors import InvalidInput
from tasks.wsi.pyramid import INTERLEAVED

if TYPE_CHECKING:
    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer
    from zarr.core.common import JSON

CODEC_NAME = "imagecodecs_jpeg"
JPEG_COMPRESSION = 7


@dataclass(frozen=True)
class JpegTileCodec(ArrayBytesCodec):
    """Zarr v3 ``imagecodecs_jpeg``: chunks are JPEG streams, decoded with libjpeg-turbo.

    ``tables`` are prepended JPEG tables for abbreviated streams; ``colorspace_jpeg`` and
    ``colorspace_data`` name the stream's and the pixels' colour spaces (``imagecodecs.JPEG8.CS``
    names, e.g. ``RGB``: Aperio writes RGB JPEG without the marker that would say so). Encoding
    (a write through zarr) is lossy JPEG; mira itself only ever copies scanned tiles.
    """

    is_fixed_size = False

    tables: bytes | None = None
    colorspace_jpeg: str | None = None
    colorspace_data: str | None = None
    level: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> JpegTileCodec:
        if data.get("name") != CODEC_NAME:
            raise ValueError(f"not an {CODEC_NAME} codec: {data.get('name')!r}")
        config = data.get("configuration") or {}
        if not isinstance(config, dict):
            raise ValueError(f"{CODEC_NAME}: the configuration must be an object")
        tables = config.get("tables")
        level = config.get("level")
        return cls(
            tables=base64.b64decode(tables) if isinstance(tables, str) else None,
            colorspace_jpeg=_name(config.get("colorspace_jpeg")),
            colorspace_data=_name(config.get("colorspace_data")),
            level=int(level) if isinstance(level, int | float | str) else None,
        )

    def to_dict(self) -> dict[str, JSON]:
        config: dict[str, JSON] = {}
        if self.level is not None:
            config["level"] = self.level
        if self.colorspace_data is not None:
            config["colorspace_data"] = self.colorspace_data
        if self.colorspace_jpeg is not None:
            config["colorspace_jpeg"] = self.colorspace_jpeg
        if self.tables is not None:
            config["tables"] = base64.b64encode(self.tables).decode()
        return {"name": CODEC_NAME, "configuration": config} if config else {"name": CODEC_NAME}

    def decode_tile(self, data: bytes | np.ndarray[Any, Any], shape: tuple[int, ...]) -> Any:
        pixels = imagecodecs.jpeg8_decode(
            cast(Any, data),
            tables=self.tables,
            colorspace=self.colorspace_jpeg,
            outcolorspace=self.colorspace_data,
        )
        return np.asarray(pixels).reshape(shape)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        data = chunk_bytes.as_numpy_array()
        pixels = await asyncio.to_thread(self.decode_tile, data, chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(pixels)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        pixels = chunk_array.as_numpy_array()
        if pixels.shape[-1] == 1:  # grey: (y, x, 1) -> (y, x)
            pixels = pixels[..., 0]
        pixels = np.ascontiguousarray(pixels)  # the transpose codec hands over a view
        encoded = await asyncio.to_thread(
            imagecodecs.jpeg8_encode,
            pixels,
            level=self.level,
            colorspace=self.colorspace_data,
            outcolorspace=self.colorspace_jpeg,
        )
        return chunk_spec.prototype.buffer.from_bytes(bytes(encoded))

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG chunks vary in size")


def _name(value: Any) -> str | None:
    """A colour space as an ``imagecodecs.JPEG8.CS`` name (accepting its number too)."""
    if value is None:
        return None
    if isinstance(value, int):
        return imagecodecs.JPEG8.CS(value).name
    return str(value)


def level0_codecs(page: tifffile.TiffPage) -> list[Any]:
    """The inner codecs of a passthrough level 0: ``(c, y, x)`` chunks transposed to the tiles'
    ``(y, x, c)``, then the tile's JPEG stream with the page's tables and colour spaces.

    Raises InvalidInput for a slide whose level 0 is not tiled, 8-bit JPEG in square tiles.
    """
    name = page.parent.filename
    if page.compression != JPEG_COMPRESSION or page.bitspersample != 8:
        raise InvalidInput(f"{name}: --codec jpeg needs 8-bit JPEG tiles at level 0")
    if not page.is_tiled or page.tilelength != page.tilewidth:
        raise InvalidInput(f"{name}: --codec jpeg needs square tiles at level 0")
    colorspace_jpeg, colorspace_data = tifffile.tifffile.jpeg_decode_colorspace(
        page.photometric, page.planarconfig, page.extrasamples, page.is_jfif
    )
    codec = JpegTileCodec(
        tables=page.jpegtables or None,
        colorspace_jpeg=_name(colorspace_jpeg),
        colorspace_data=_name(colorspace_data),
    )
    return [TransposeCodec(order=INTERLEAVED), codec]


def register() -> None:
    """Make ``imagecodecs_jpeg`` known to zarr in this process (the entry point does it for
    others), unless another implementation (imagecodecs-zarr) already is."""
    try:
        zarr.registry.get_codec_class(CODEC_NAME)
    except KeyError:
        zarr.registry.register_codec(CODEC_NAME, JpegTileCodec)


register()
