"""The project's errors: one base class, specific subclasses that also inherit the matching builtin."""

from __future__ import annotations


class MiraError(Exception):
    """Base class of every error mira raises on purpose; the CLI prints these as one line."""


class StoreError(MiraError):
    """A storage backend failed; the message names the URL."""


class ObjectNotFound(StoreError, FileNotFoundError):
    """The object or prefix does not exist."""


class AccessDenied(StoreError, PermissionError):
    """The backend refused access (credentials, bucket policy, file mode)."""


class AlreadyExists(StoreError, FileExistsError):
    """An exclusive create found the key already present."""


class ObjectLocked(AccessDenied):
    """The object version is under Object Lock retention (or read-only) and cannot be changed."""


class TransientStoreError(StoreError, ConnectionError):
    """A network failure, a throttle or a server error that may succeed when retried."""


class ConfigError(MiraError, ValueError):
    """Settings or a profile file are missing or invalid."""


class InvalidInput(MiraError, ValueError):
    """Input data that mira cannot accept (bad file, bad batch, bad argument)."""


class DeidentificationError(MiraError, ValueError):
    """A file could not be made safe; it must be quarantined, never published."""


class PhiLeak(MiraError):
    """An identifier from the input was found in an output."""


class IntegrityError(MiraError, ValueError):
    """Content does not match its recorded SHA-256 (snapshot verify, manifest check)."""
