"""Small generated whole-slide TIFFs for the WSI tests (and the benchmark's large slide).

Pixels are drawn tile by tile from global coordinates (smooth stain fields, "nuclei", noise), so
a slide of any size is written without ever holding it in memory and every tile agrees with its
neighbours. Layouts: Aperio SVS (JPEG with RGB colour space like Aperio's, or Aperio JPEG 2000),
generic pyramidal TIFF or BigTIFF with SubIFD levels, and OME-TIFF; codecs JPEG, JPEG 2000,
zstd or none.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
from numpy.typing import NDArray

Kind = Literal["svs", "tiff", "ome"]
Codec = Literal["jpeg", "jpeg2000", "zstd", "none"]
Pixels = NDArray[np.uint8]

BACKGROUND = np.array([242, 240, 241], np.float32)
EOSIN = np.array([226, 150, 190], np.float32)
HEMATOXYLIN = np.array([110, 70, 150], np.float32)
# Identifiers a scanner writes into the description: none of them may reach a pyramid.
PHI_FIELDS = {
    "ScanScope ID": "SS9876",
    "Filename": "DOE-JOHN-1984-S1",
    "Date": "03/14/24",
    "Time": "09:26:53",
    "User": "5b0e2a5c-7f0c-4b7e-9a5e-3f1d2c4b5a69",
}


def tile_pixels(
    top: int, left: int, height: int, width: int, seed: int = 0, step: int = 1
) -> Pixels:
    """The slide's pixels ``[top:top+height, left:left+width]`` (every ``step``-th pixel of the
    full-resolution slide from there: reduced levels), as (y, x, RGB) uint8.

    Separable stain fields keep it cheap: a 20k x 17k slide is drawn in seconds.
    """
    y = (top + step * np.arange(height, dtype=np.float32))[:, None]
    x = (left + step * np.arange(width, dtype=np.float32))[None, :]
    phase = seed * 0.7
    tissue = 0.5 + 0.5 * np.sin(x / 1100.0 + phase) * np.cos(y / 900.0 - phase)
    tissue = np.clip((tissue - 0.35) * 3.0, 0.0, 1.0)
    nuclei = np.clip(np.sin(x / 7.3 + phase) * np.sin(y / 6.1), 0.0, 1.0) ** 4
    rgb = BACKGROUND + (tissue[..., None] * (EOSIN - BACKGROUND))
    rgb += (tissue * nuclei)[..., None] * (HEMATOXYLIN - EOSIN)
    rng = np.random.default_rng((seed, top, left, step))
    rgb += rng.integers(-8, 9, size=rgb.shape, dtype=np.int8)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def slide_pixels(height: int, width: int, seed: int = 0, tile: int = 256) -> Pixels:
    """A whole (small) slide, assembled from the same tiles the writer uses."""
    image = np.empty((height, width, 3), np.uint8)
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            h, w = min(tile, height - top), min(tile, width - left)
            image[top : top + h, left : left + w] = tile_pixels(top, left, h, w, seed)
    return image


def _tiles(height: int, width: int, tile: int, seed: int, factor: int) -> Iterator[Pixels]:
    """Full-size tiles (edge tiles padded) of the slide point-sampled every ``factor`` pixels."""
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            h, w = min(tile, height - top), min(tile, width - left)
            padded = np.zeros((tile, tile, 3), np.uint8)
            padded[:h, :w] = tile_pixels(top * factor, left * factor, h, w, seed, factor)
            yield padded


def _compression(codec: Codec, kind: Kind) -> tuple[Any, dict[str, Any]]:
    if codec == "jpeg":
        # RGB colour space without JFIF, as Aperio writes it (tifffile's default is YCbCr).
        args: dict[str, Any] = {"level": 80}
        return "jpeg", {**args, "outcolorspace": "RGB"} if kind == "svs" else args
    if codec == "jpeg2000":
        return (33005 if kind == "svs" else "jpeg2000"), {}
    if codec == "zstd":
        return "zstd", {"level": 3}
    return None, {}


def aperio_description(width: int, height: int, mpp: float, power: float = 40.0) -> str:
    """An Aperio ImageDescription with the usual optical fields and the identifying ones."""
    fields = {"AppMag": f"{power:g}", "StripeWidth": "2040", **PHI_FIELDS, "MPP": f"{mpp:.4f}"}
    text = "|".join(f"{key} = {value}" for key, value in fields.items())
    return f"Aperio Image Library v12.0.15 \r\n{width}x{height} [0,0 {width}x{height}] (256x256) JPEG/RGB Q=80|{text}"


def write_slide(
    path: Path,
    height: int,
    width: int,
    *,
    kind: Kind = "tiff",
    codec: Codec = "jpeg",
    tile: int = 256,
    levels: int = 3,
    bigtiff: bool = False,
    mpp: float = 0.25,
    seed: int = 0,
    maxworkers: int = 1,
) -> Path:
    """Write a tiled multi-level slide; its own lower levels are 4x point-sampled reductions."""
    compression, args = _compression(codec, kind)
    common: dict[str, Any] = {
        "dtype": np.uint8,
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": compression,
        "compressionargs": args,
        "maxworkers": maxworkers,
    }
    shapes = [(-(-height // 4**k), -(-width // 4**k)) for k in range(levels)]
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=kind == "ome") as writer:
        if kind == "svs":
            common["metadata"] = None  # no tifffile "shaped" JSON: it would hide the SVS layout
            _write_svs(writer, shapes, common, tile, seed, mpp)
        else:
            _write_subifd_pyramid(writer, shapes, common, tile, seed, mpp, kind)
    return path


def _write_svs(
    writer: tifffile.TiffWriter,
    shapes: list[tuple[int, int]],
    common: dict[str, Any],
    tile: int,
    seed: int,
    mpp: float,
) -> None:
    """Baseline, thumbnail (stripped), reduced levels as plain pages, then label and macro."""
    (height, width), description = shapes[0], aperio_description(shapes[0][1], shapes[0][0], mpp)
    writer.write(
        _tiles(height, width, tile, seed, 1),
        shape=(height, width, 3),
        description=description,
        **common,
    )
    thumb = (
        slide_pixels(*shapes[-1], seed=seed)[::2, ::2]
        if len(shapes) > 1
        else np.zeros((8, 8, 3), np.uint8)
    )
    writer.write(
        thumb,
        photometric="rgb",
        description="Aperio Image Library v12.0.15 \r\nthumbnail",
        metadata=None,
    )
    for k, (h, w) in enumerate(shapes[1:], start=1):
        writer.write(
            _tiles(h, w, tile, seed, 4**k), shape=(h, w, 3), description="Aperio level", **common
        )
    label = np.full((96, 80, 3), 255, np.uint8)
    writer.write(label, photometric="rgb", subfiletype=1, description="label 80x96", metadata=None)
    writer.write(label, photometric="rgb", subfiletype=9, description="macro 80x96", metadata=None)


def _write_subifd_pyramid(
    writer: tifffile.TiffWriter,
    shapes: list[tuple[int, int]],
    common: dict[str, Any],
    tile: int,
    seed: int,
    mpp: float,
    kind: Kind,
) -> None:
    """Full resolution with SubIFD levels; resolution tags (TIFF) or OME PhysicalSize (OME)."""
    height, width = shapes[0]
    extra: dict[str, Any] = {"subifds": len(shapes) - 1}
    if kind == "ome":
        extra["metadata"] = {
            "axes": "YXS",
            "PhysicalSizeX": mpp,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": mpp,
            "PhysicalSizeYUnit": "µm",
        }
    else:
        extra["resolution"] = (1e4 / mpp, 1e4 / mpp)
        extra["resolutionunit"] = "CENTIMETER"
        extra["metadata"] = None
    writer.write(_tiles(height, width, tile, seed, 1), shape=(height, width, 3), **common, **extra)
    for k, (h, w) in enumerate(shapes[1:], start=1):
        writer.write(
            _tiles(h, w, tile, seed, 4**k),
            shape=(h, w, 3),
            subfiletype=1,
            **common,
            metadata=None if kind != "ome" else {},
        )
