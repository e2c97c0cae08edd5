"""Gateway object names stay on the gateway: errors that leave it name objects by batch and index.

Upload folders and file names carry patients' names, dates and accession numbers
(``SMITH_MARIA/20230612_MR/IM0004.dcm``). An exception raised while a gateway-side stage runs
crosses into Prefect's database (state messages, logs, events) and into webhook payloads; before it
does, every drop-zone path in its message becomes ``<batch> object #<n>`` (the object's index in the
sorted batch listing, markers left out), and any path the listing could not resolve (the store is down, the object
is gone) becomes ``<batch> object``. The traceback's frames are kept; the original message is not.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mira.errors import MiraError
from storage import Store
from tasks import layout
from tasks.ingest.dropzone import CONTROL_FILES

MIN_NAME_CHARS = 3  # shorter folder names ("CT", "MR") say nothing about anyone


class GatewayError(MiraError):
    """An unexpected error of a gateway-side stage, its message cleared of object names."""


@dataclass(frozen=True)
class GatewayNames:
    """The objects of one drop-zone batch, to name them by index instead of by path."""

    gateway_url: str
    batch: str
    paths: tuple[str, ...]  # relative to the batch folder, sorted

    @classmethod
    def of_batch(cls, gateway: Store, batch: str) -> GatewayNames:
        """The batch's objects as listed now; none when the listing fails (the store is down)."""
        prefix = f"{layout.DROPZONE}/{batch}/"
        try:
            listed = (info.key.removeprefix(prefix) for info in gateway.list(prefix))
            paths = sorted(path for path in listed if path not in CONTROL_FILES)
        except Exception:  # redaction must work while the store that failed is still failing
            paths = []
        return cls(gateway.url.rstrip("/"), batch, tuple(paths))

    def redact(self, text: str) -> str:
        """``text`` with every drop-zone path of the batch replaced by its index."""
        batch_folder = f"{layout.DROPZONE}/{self.batch}/"
        for index, path in sorted(enumerate(self.paths), key=lambda p: -len(p[1])):
            name = f"{self.batch} object #{index}"
            text = text.replace(f"{self.gateway_url}/{batch_folder}{path}", name)
            text = text.replace(f"{batch_folder}{path}", name)
            text = text.replace(path, name)
        text = re.sub(
            rf"(?:\S*/)?{re.escape(batch_folder)}(?:[^\s'\",)]*[^\s'\",):])?",
            f"{self.batch} object",
            text,
        )
        return _names_of(self.paths).sub(f"{self.batch} object", text)


def _names_of(paths: Sequence[str]) -> re.Pattern[str]:
    """Every folder and file name of the batch (longest first), as whole words."""
    parts = {
        part
        for path in paths
        for part in path.split("/")
        if len(part) >= MIN_NAME_CHARS and not part.isdigit()
    }
    if not parts:
        return re.compile(r"(?!x)x")  # matches nothing
    alternatives = "|".join(re.escape(p) for p in sorted(parts, key=len, reverse=True))
    return re.compile(rf"(?<![\w.-])(?:{alternatives})(?![\w-])")


@contextlib.contextmanager
def gateway_names_hidden(gateway: Store, batch: str) -> Iterator[None]:
    """Re-raise any error of the block with the batch's object names replaced (see module doc).

    A mira error keeps its class (so a transient store error is still retried); any other
    becomes a ``GatewayError`` naming the original class.
    """
    try:
        yield
    except Exception as err:
        message = GatewayNames.of_batch(gateway, batch).redact(str(err))
        if isinstance(err, MiraError):
            if message == str(err):
                raise
            try:
                redacted: Exception = type(err)(message)
            except TypeError:  # a subclass with another constructor
                redacted = GatewayError(message)
        else:
            redacted = GatewayError(f"{type(err).__name__}: {message}")
        raise redacted.with_traceback(err.__traceback__) from None
