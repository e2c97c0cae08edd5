"""Every byte mira reads or writes goes through a ``Store``, opened by URL.

``open_store("data/research")`` or ``open_store("file:///srv/mira")`` gives a local folder;
``open_store("s3://bucket/prefix", s3_config)`` an S3 prefix. No other package imports s3fs.
``open_object(url)`` splits the URL of one object (or folder) into its store and key.
"""

from __future__ import annotations

from pathlib import Path

from storage.base import (
    ObjectInfo,
    ObjectVersion,
    Retention,
    S3Config,
    SpecialEntry,
    Store,
    join_key,
    sha256_stream,
)

__all__ = [
    "ObjectInfo",
    "ObjectVersion",
    "Retention",
    "S3Config",
    "SpecialEntry",
    "Store",
    "is_s3_url",
    "join_key",
    "open_object",
    "open_store",
    "sha256_stream",
]


def is_s3_url(url: str) -> bool:
    """Whether ``url`` names an S3 location."""
    return url.startswith("s3://")


def open_store(url: str | Path, s3: S3Config | None = None) -> Store:
    """The store for ``url``: a folder path, ``file://`` URL or ``s3://bucket/prefix``."""
    from mira.errors import ConfigError

    text = str(url)
    if is_s3_url(text):
        from storage.s3 import S3Store

        return S3Store(text, s3 or S3Config())
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    elif "://" in text:
        raise ConfigError(f"unsupported store URL {text!r}: use a folder, file:// or s3://")
    from storage.local import LocalStore

    return LocalStore(text)


def open_object(url: str | Path, s3: S3Config | None = None) -> tuple[Store, str]:
    """The store holding the object at ``url`` and its key there: ``out/slide.svs`` gives the
    folder ``out`` and ``slide.svs``; ``s3://bucket/prefix/slide.svs`` the store
    ``s3://bucket/prefix`` and ``slide.svs``. The last segment may name a folder of objects
    (a pyramid, a batch): its key is then a prefix in the store."""
    from mira.errors import InvalidInput

    text = str(url)
    if is_s3_url(text):
        from storage.s3 import parse_s3_url

        bucket, path = parse_s3_url(text)
        folder, _, key = path.rpartition("/")
        if not key:
            raise InvalidInput(f"{text!r} names a bucket, not an object in it")
        return open_store(f"s3://{join_key(bucket, folder)}", s3), key
    if "://" in text and not text.startswith("file://"):
        open_store(text)  # refuses the scheme with the message every store URL gets
    local = Path(text.removeprefix("file://")).expanduser()
    if local.name in ("", ".", ".."):
        raise InvalidInput(f"{text!r} names a folder by '.', '..' or '/', not an object")
    return open_store(local.parent), local.name
