"""mira: Medical Imaging Research Archive."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mira")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
