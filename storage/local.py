"""A local folder as a store: the embedded default. Atomic publish by rename, exclusive by link."""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from mira.errors import AccessDenied, AlreadyExists, InvalidInput, ObjectLocked, ObjectNotFound
from storage.base import (
    CHUNK_BYTES,
    ObjectInfo,
    Retention,
    SpecialEntry,
    SpecialKind,
    Store,
    byte_view,
    join_key,
)
from storage.errors import TranslatedReader, translate_errors

if TYPE_CHECKING:
    from storage.base import ObjectData

TEMP_MARK = ".~mira-tmp-"
ZARR_TEMP = re.compile(r"\.[0-9a-f]{32}\.partial$")  # zarr's LocalStore: <name>.<uuid>.partial
RETENTION_XATTR = "user.mira.retention"
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


class LocalStore(Store):
    """Objects are files below ``root``; keys are relative posix paths.

    "Locking" a file makes it read-only and refuses deletion through mira. That protects
    against mistakes, not against an administrator: it is weaker than S3 Object Lock.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (LocalStore, (self.root,))

    def child(self, prefix: str) -> LocalStore:
        return LocalStore(self._path(prefix)) if prefix.strip("/") else self

    def _path(self, key: str) -> Path:
        parts = [p for p in key.split("/") if p]
        if any(p in (".", "..") for p in parts) or key.startswith(TEMP_MARK):
            raise InvalidInput(f"invalid key {key!r} in {self.url}")
        return self.root.joinpath(*parts)

    @property
    def is_local(self) -> bool:
        return True

    def filesystem_path(self, key: str) -> str:
        return str(self._path(key))

    @property
    def supports_versions(self) -> bool:
        return False

    def open_read(
        self, key: str, version_id: str | None = None, *, block_size: int | None = None
    ) -> BinaryIO:
        path = self._path(key)
        try:
            handle = _open_regular(self.root, path, self.url_of(key))
            return TranslatedReader(handle, self.url_of(key))  # type: ignore[return-value]
        except FileNotFoundError as err:
            raise ObjectNotFound(f"no such object: {self.url_of(key)}") from err
        except IsADirectoryError as err:
            raise ObjectNotFound(f"not an object (a folder): {self.url_of(key)}") from err
        except PermissionError as err:
            raise AccessDenied(f"permission denied: {self.url_of(key)}") from err

    def write_stream(
        self,
        key: str,
        stream: IO[bytes],
        *,
        exclusive: bool = False,
        retention: Retention | None = None,
    ) -> ObjectInfo:
        path = self._path(key)
        if path.exists() and not exclusive and _is_read_only(path):
            raise ObjectLocked(f"object is locked (read-only): {self.url_of(key)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as err:
            raise InvalidInput(f"a parent of {self.url_of(key)} is an object") from err
        temp = path.with_name(f"{TEMP_MARK}{path.name}.{uuid.uuid4().hex}")
        try:
            digest, size = _write_temp(temp, stream)
            self._publish(temp, path, key, exclusive)
        finally:
            temp.unlink(missing_ok=True)
        if retention is not None:
            self.set_retention(key, retention)
        return self._info(path, key, sha256=digest, size=size)

    def write_many(self, objects: Mapping[str, ObjectData]) -> None:
        """Each object to a temporary file beside it, renamed into place, from this thread: on a
        fast disk the hand-offs of zarr's async store cost more than the copy."""
        for key, data in objects.items():
            path = self._path(key)
            with translate_errors(self.url_of(key)):
                if _exists_read_only(path):
                    raise ObjectLocked(f"object is locked (read-only): {self.url_of(key)}")
                temp = path.with_name(f"{TEMP_MARK}{path.name}.{uuid.uuid4().hex}")
                try:
                    _write_file(temp, data)
                    os.replace(temp, path)
                except BaseException:
                    temp.unlink(missing_ok=True)
                    raise

    def remove_incomplete(self, prefix: str = "") -> int:
        """Temporary files of writes cut short: mira's own (hidden from ``list``) and those of
        zarr's local store (``<name>.<uuid>.partial``, which ``list`` shows)."""
        removed = 0
        for dirpath, _dirs, files in os.walk(self._path(prefix)):
            for name in files:
                if name.startswith(TEMP_MARK) or ZARR_TEMP.search(name):
                    Path(dirpath, name).unlink(missing_ok=True)
                    removed += 1
        return removed

    def _publish(self, temp: Path, path: Path, key: str, exclusive: bool) -> None:
        if not exclusive:
            os.replace(temp, path)
            return
        try:
            os.link(temp, path)  # fails atomically when the key exists
        except FileExistsError as err:
            raise AlreadyExists(f"object already exists: {self.url_of(key)}") from err

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for key, path, mode in self._entries(prefix):
            if stat.S_ISREG(mode):
                yield self._info(path, key)

    def list_special(self, prefix: str = "") -> Iterator[SpecialEntry]:
        for key, _path, mode in self._entries(prefix):
            if not stat.S_ISREG(mode):
                yield SpecialEntry(key, _special_kind(mode))

    def _entries(self, prefix: str) -> builtins.list[tuple[str, Path, int]]:
        """(key, path, mode) of every entry below ``prefix`` that is not a folder, sorted by key.

        Links below the root are never followed: a link (to a file or a folder) is an entry of
        its own, and a prefix inside a linked folder holds nothing.
        """
        base = self._path(prefix)
        mode = self._mode(base)
        if mode is not None and not stat.S_ISDIR(mode):
            return [(join_key(prefix), base, mode)]
        if mode is not None:  # a folder, and no link on the way to it
            walk_root, wanted = base, ""
        else:  # not there: a name prefix of the entries in its folder, as on S3
            walk_root, wanted = base.parent, join_key(prefix)
            folder_mode = self._mode(walk_root) if base != self.root else None
            if folder_mode is None or not stat.S_ISDIR(folder_mode):
                return []
        found: builtins.list[tuple[str, Path, int]] = []
        for dirpath, dirnames, filenames in os.walk(walk_root):  # does not enter linked folders
            dirnames.sort()
            for name in (*dirnames, *filenames):
                full = Path(dirpath, name)
                key = full.relative_to(self.root).as_posix()
                if name.startswith(TEMP_MARK) or not key.startswith(wanted):
                    continue
                with contextlib.suppress(FileNotFoundError):  # removed while listed
                    entry_mode = full.lstat().st_mode
                    if not stat.S_ISDIR(entry_mode):
                        found.append((key, full, entry_mode))
        return sorted(found)

    def _mode(self, path: Path) -> int | None:
        """The mode of ``path`` itself (a link is not followed); None when it does not exist or
        lies inside a linked folder."""
        if path == self.root:
            return self.root.stat().st_mode if self.root.exists() else None
        try:
            for folder in reversed(path.relative_to(self.root).parents[:-1]):
                if not stat.S_ISDIR(os.lstat(self.root / folder).st_mode):
                    return None
            return os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, key: str) -> bool:
        mode = self._mode(self._path(key))
        return mode is not None and stat.S_ISREG(mode)

    def info(self, key: str) -> ObjectInfo:
        path = self._path(key)
        if not self.exists(key):
            raise ObjectNotFound(f"no such object: {self.url_of(key)}")
        return self._info(path, key)

    def _info(
        self, path: Path, key: str, sha256: str | None = None, size: int | None = None
    ) -> ObjectInfo:
        st = path.stat()
        return ObjectInfo(
            key=key,
            size=st.st_size if size is None else size,
            etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
            sha256=sha256,
        )

    def copy(self, src_key: str, dst_key: str) -> ObjectInfo:
        with self.open_read(src_key) as src:
            return self.write_stream(dst_key, src)

    def delete(self, key: str, version_id: str | None = None) -> None:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no such object: {self.url_of(key)}")
        if _is_read_only(path):
            raise ObjectLocked(f"object is locked (read-only): {self.url_of(key)}")
        path.unlink()
        _prune_empty_parents(path.parent, self.root)

    @property
    def supports_object_lock(self) -> bool:
        return False

    def set_retention(self, key: str, retention: Retention, version_id: str | None = None) -> None:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no such object: {self.url_of(key)}")
        record = json.dumps({"mode": retention.mode, "until": retention.until.isoformat()})
        with contextlib.suppress(OSError):  # not every filesystem keeps user xattrs
            os.setxattr(path, RETENTION_XATTR, record.encode())
        path.chmod(READ_ONLY)

    def get_retention(self, key: str, version_id: str | None = None) -> Retention | None:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"no such object: {self.url_of(key)}")
        if not _is_read_only(path):
            return None
        try:
            record = json.loads(os.getxattr(path, RETENTION_XATTR))
        except OSError:
            return Retention(mode="GOVERNANCE", until=datetime.max.replace(tzinfo=UTC))
        return Retention(mode=record["mode"], until=datetime.fromisoformat(record["until"]))

    def zarr_store(self, prefix: str, *, read_only: bool = False) -> Any:
        from zarr.storage import LocalStore as ZarrLocalStore

        from storage.zarr_adapter import TranslatingZarrStore

        store = ZarrLocalStore(self._path(prefix), read_only=read_only)
        return TranslatingZarrStore(store, self.url_of(prefix))


def _open_regular(root: Path, path: Path, url: str) -> BinaryIO:
    """Open the regular file at ``path`` without following a link anywhere below ``root``,
    folder by folder. A link, FIFO, socket or device is not an object and is never opened:
    a link could lead out of the store, a FIFO would block, ``/dev/zero`` never ends."""
    *folders, name = path.relative_to(root).parts or (".",)
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in folders:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "a folder", str(path))
        if not stat.S_ISREG(mode):
            raise ObjectNotFound(f"not an object (a {_special_kind(mode)}): {url}")
        handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ObjectNotFound(f"not an object (a link or a file on its path): {url}") from err
        raise
    finally:
        os.close(folder)
    if not stat.S_ISREG(os.fstat(handle).st_mode):  # replaced since it was looked at
        os.close(handle)
        raise ObjectNotFound(f"not an object (a special file): {url}")
    os.set_blocking(handle, True)
    return open(path, "rb", opener=lambda _path, _flags: handle)  # named by its path, as usual


def _special_kind(mode: int) -> SpecialKind:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    return "socket" if stat.S_ISSOCK(mode) else "device"


def _write_temp(temp: Path, stream: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with temp.open("xb") as out:
        while chunk := stream.read(CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest(), size


def _write_file(path: Path, data: ObjectData) -> None:
    """Create ``path`` (and its folders) holding ``data``."""
    try:
        handle = path.open("xb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("xb")
    with handle:
        handle.write(byte_view(data))


def _exists_read_only(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return False
    return not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _is_read_only(path: Path) -> bool:
    return not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _prune_empty_parents(folder: Path, root: Path) -> None:
    """Remove folders left empty by a delete, up to (not including) the store root."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def remove_tree(path: Path) -> None:
    """Delete a local folder tree, read-only files included (used by tests and ``clean``)."""
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            Path(dirpath, name).chmod(stat.S_IRUSR | stat.S_IWUSR)
    shutil.rmtree(path, ignore_errors=True)
