"""Every byte mira reads or writes goes through a ``Store``, opened by URL.

``open_store("data/research")`` or ``open_store("file:///srv/mira")`` gives a local folder;
``open_store("s3://bucket/prefix", s3_config)`` an S3 prefix. No other package imports s3fs.
"""

from __future__ import annotations

from pathlib import Path

from storage.base import (
    ObjectInfo,
    ObjectVersion,
    Retention,
    S3Config,
    Store,
    join_key,
    sha256_stream,
)

__all__ = [
    "ObjectInfo",
    "ObjectVersion",
    "Retention",
    "S3Config",
    "Store",
    "is_s3_url",
    "join_key",
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
