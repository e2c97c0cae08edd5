"""The OME-NGFF side of a pyramid: array metadata, multiscales/omero attributes, object keys.

Layout of ``pyramids/<slide>.ome.zarr`` (NGFF 0.5, Zarr v3)::

    zarr.json            root group: attributes.ome (multiscales, omero) and attributes.mira
                         (the completion record); written LAST, so its presence means complete
    0/zarr.json          level 0 array, (c, y, x), sharded, its chunks stored (y, x, c)
                         through a transpose codec; attributes.mira.run ties the
    0/c/0/<i>/<j>        partial work to one source and option set (see ``run_fingerprint``)
    1/ ... <n>/          each level a 2x2 mean of the one above

NGFF 0.4 (Zarr v2) has the same tree with ``.zgroup``/``.zattrs``/``.zarray`` documents, chunk
objects ``<level>/0/<y>/<x>`` ('/' separator) and no sharding, which Zarr v2 lacks; the root
``.zattrs`` is the one written last.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.codecs import TransposeCodec

from storage import Store, join_key
from tasks.wsi.pyramid import INTERLEAVED, ChunkCodec, PyramidPlan
from tasks.wsi.record import CompletionRecord
from tasks.wsi.source import SlideMetadata

NgffVersion = Literal["0.5", "0.4"]
LAYOUT_VERSION = 2  # bump when the bytes mira writes for the same input and options change
AXES = ("c", "y", "x")
RGB_CHANNELS = (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
CHANNEL_COLOURS = ("0000FF", "00FF00", "FF0000", "FFFF00", "FF00FF", "00FFFF", "FFFFFF")


def zarr_format(version: NgffVersion) -> Literal[2, 3]:
    return 3 if version == "0.5" else 2


def run_fingerprint(source: str, settings: Mapping[str, Any]) -> str:
    """Identifies one conversion's output: the source (content hash, or size and etag), the layout
    options, the writer.

    Partial arrays carrying the same fingerprint can be resumed; any other partial state is wiped.
    """
    text = json.dumps(
        {"source": source, "settings": dict(settings), "layout": LAYOUT_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def region_keys(
    plan: PyramidPlan, version: NgffVersion, level: int, row: int, col: int
) -> list[str]:
    """Object keys (relative to the pyramid) that one region of one level is stored in."""
    if version == "0.5":
        return [f"{level}/c/0/{row}/{col}"]
    per_side = plan.shard // plan.chunk
    y0, x0, h, w = plan.region(level, row, col)
    return [
        f"{level}/0/{(y0 // plan.chunk) + cy}/{(x0 // plan.chunk) + cx}"
        for cy in range(min(per_side, -(-h // plan.chunk)))
        for cx in range(min(per_side, -(-w // plan.chunk)))
    ]


def create_level_arrays(
    target: Store,
    pyramid_key: str,
    plan: PyramidPlan,
    codec: ChunkCodec,
    version: NgffVersion,
    fingerprint: str,
    level0_codecs: list[Any] | None = None,
) -> None:
    """Write every level's array metadata (no data, no root group yet). ``level0_codecs``
    (array-to-array filters, then the serializer) replace level 0's codecs: JPEG passthrough."""
    for level in range(plan.levels):
        # A store rooted at the level, so zarr does not write an implicit root group.
        store = target.zarr_store(join_key(pyramid_key, str(level)))
        kwargs: dict[str, Any] = {
            "shape": plan.array_shape(level),
            "dtype": plan.dtype,
            "chunks": (plan.samples, plan.chunk, plan.chunk),
            "fill_value": 0,
            "attributes": {"mira": {"run": fingerprint}},
            "overwrite": True,
            "zarr_format": zarr_format(version),
        }
        if version == "0.5":
            compressor = codec.zarr3_compressor()
            kwargs["shards"] = (plan.samples, plan.shard, plan.shard)
            kwargs["compressors"] = [compressor] if compressor is not None else None
            kwargs["filters"] = [TransposeCodec(order=INTERLEAVED)]  # chunks stored (y, x, c)
            kwargs["dimension_names"] = AXES
            if level == 0 and level0_codecs:
                *kwargs["filters"], kwargs["serializer"] = level0_codecs
                kwargs["compressors"] = None
        else:
            kwargs["compressors"] = codec.numcodec()
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        zarr.create_array(store, **kwargs)


def level_fingerprints(target: Store, pyramid_key: str, plan: PyramidPlan) -> set[str | None]:
    """The run fingerprint of each level array present (None for a missing or foreign one)."""
    found: set[str | None] = set()
    for level in range(plan.levels):
        key = join_key(pyramid_key, str(level))
        document = _read_json(target, join_key(key, "zarr.json"))
        attributes = (
            document.get("attributes") if document else _read_json(target, join_key(key, ".zattrs"))
        )
        found.add(((attributes or {}).get("mira") or {}).get("run"))
    return found


def multiscales(plan: PyramidPlan, slide: SlideMetadata, version: NgffVersion) -> dict[str, Any]:
    """One multiscale: axes c/y/x, per-level scale and the half-pixel translation of the means.

    A level-k pixel averages 2^k x 2^k level-0 pixels, so its centre sits (2^k - 1)/2 level-0
    pixels right of and below the first one it covers.
    """
    mpp_x = slide.mpp_x or 1.0
    mpp_y = slide.mpp_y or mpp_x
    space: dict[str, str] = {"type": "space"}
    if slide.mpp_x:
        space["unit"] = "micrometer"
    datasets = []
    for level in range(plan.levels):
        factor, shift = 2.0**level, (2.0**level - 1) / 2
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {
                        "type": "scale",
                        "scale": [1.0, _round(mpp_y * factor), _round(mpp_x * factor)],
                    },
                    {
                        "type": "translation",
                        "translation": [0.0, _round(mpp_y * shift), _round(mpp_x * shift)],
                    },
                ],
            }
        )
    result: dict[str, Any] = {
        "name": "image",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", **space}, {"name": "x", **space}],
        "datasets": datasets,
        "type": "mean",
        "metadata": {
            "description": "2x2 block mean per level, rounded half up; an odd last row or column "
            "is averaged with itself",
            "method": "tasks.wsi.pyramid.downsample_mean",
        },
    }
    if version == "0.4":
        result = {"version": "0.4", **result}
    return result


def _round(value: float) -> float:
    """Physical sizes to 12 significant digits: 0.7485, not 0.7484999999999999."""
    return float(f"{value:.12g}")


def omero(plan: PyramidPlan, names: tuple[str, ...] = ()) -> dict[str, Any]:
    """Rendering defaults: red/green/blue (or grey, or a multiplexed slide's named channels in
    distinct colours) over the full range of the pixel type."""
    top = float(np.iinfo(np.dtype(plan.dtype)).max)
    named: tuple[tuple[str, str], ...] = (
        RGB_CHANNELS if plan.samples == 3 else (("gray", "FFFFFF"),)
    )
    if names and len(names) == plan.samples:
        named = tuple(zip(names, itertools.cycle(CHANNEL_COLOURS), strict=False))
    window = {"min": 0.0, "max": top, "start": 0.0, "end": top}
    channels = [
        {
            "label": label,
            "color": color,
            "window": window,
            "active": True,
            "coefficient": 1.0,
            "family": "linear",
            "inverted": False,
        }
        for label, color in named
    ]
    model = "color" if len(named) > 1 else "greyscale"
    return {"channels": channels, "rdefs": {"model": model}}


def root_attributes(
    plan: PyramidPlan, slide: SlideMetadata, version: NgffVersion, record: CompletionRecord
) -> dict[str, Any]:
    """The root group's attributes: the OME metadata in the version's place, plus ``mira``."""
    ome = {"multiscales": [multiscales(plan, slide, version)], "omero": omero(plan, slide.channels)}
    if version == "0.5":
        return {"ome": {"version": "0.5", **ome}, "mira": record.to_attributes()}
    return {**ome, "mira": record.to_attributes()}


def publish_root(
    target: Store, pyramid_key: str, version: NgffVersion, attributes: Mapping[str, Any]
) -> None:
    """Write the root group document(s), the completion record's carrier last."""
    if version == "0.5":
        documents = {
            "zarr.json": {"zarr_format": 3, "node_type": "group", "attributes": attributes}
        }
    else:
        documents = {".zgroup": {"zarr_format": 2}, ".zattrs": dict(attributes)}
    for key, document in documents.items():  # one at a time: the order is the protocol
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        store_objects(target, pyramid_key, {key: text.encode()})


def read_completion_record(target: Store, pyramid_key: str) -> CompletionRecord | None:
    """The ``mira`` record of a published pyramid (either NGFF version), or None when absent."""
    document = _read_json(target, join_key(pyramid_key, "zarr.json"))
    attributes = document.get("attributes") if document else None
    if attributes is None:
        attributes = _read_json(target, join_key(pyramid_key, ".zattrs"))
    return CompletionRecord.from_attributes((attributes or {}).get("mira"))


def store_objects(
    target: Store, pyramid_key: str, objects: Mapping[str, bytes | NDArray[np.uint8]]
) -> None:
    """Store objects (keys relative to the pyramid) in the target, each one atomically: from the
    calling thread on a local disk, where zarr's async store costs more than the copy; as
    concurrent PUTs on S3 (``Store.write_many``)."""
    target.write_many({join_key(pyramid_key, key): data for key, data in objects.items()})


def _read_json(target: Store, key: str) -> dict[str, Any] | None:
    if not target.exists(key):
        return None
    try:
        value = target.read_json(key)
    except (ValueError, FileNotFoundError):
        return None
    return value if isinstance(value, dict) else None
