"""mira: Medical Imaging Research Archive."""

from importlib.metadata import PackageNotFoundError, version

from mira.offline import apply_offline_defaults

apply_offline_defaults()

try:
    __version__ = version("mira")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
