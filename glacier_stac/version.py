"""The installed package version, for provenance records (imports nothing of the project)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("glacier_stac")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
