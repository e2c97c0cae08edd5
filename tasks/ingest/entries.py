"""Drop-zone entries that are not plain objects, or not plainly named.

A link or special file (FIFO, socket, device) in a batch is never followed or opened: a link
can lead out of the drop zone (another patient's file, ``/etc/passwd``), a FIFO blocks the reader
and ``/dev/zero`` never ends. It is quarantined by name (``not-a-regular-file``): a reason record,
no copy. A file name that is not UTF-8 (a local folder holds any bytes) cannot go into the
accepted list, JSON records or S3 keys: the object is quarantined (``invalid-name``) under its
escaped name, each byte that is not UTF-8 written ``\\xNN``.
"""

from __future__ import annotations

from storage.base import SpecialKind
from tasks.ingest.inspection import Inspection, Rejection

SPECIAL_NAMES: dict[SpecialKind, str] = {
    "symlink": "a symbolic link",
    "fifo": "a FIFO (named pipe)",
    "socket": "a socket",
    "device": "a device file",
}


def escape_name(path: str) -> str:
    """``path`` with every byte that is not UTF-8 written as ``\\xNN``; a valid name unchanged."""
    try:
        raw = path.encode("utf-8", "surrogateescape")  # how the OS handed over undecodable bytes
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def name_rejection(path: str) -> Rejection | None:
    """Why a path cannot be ingested under its own name, or None when it can."""
    escaped = escape_name(path)
    if escaped == path:
        return None
    return Rejection("invalid-name", f"the file name is not UTF-8: {escaped}")


def special_inspection(kind: SpecialKind) -> Inspection:
    """The inspection of an entry that is not a regular file, made without opening it."""
    detail = f"{SPECIAL_NAMES[kind]}, never followed or opened: upload the file itself"
    return Inspection("", 0, "unknown", rejection=Rejection("not-a-regular-file", detail))
