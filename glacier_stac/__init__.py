"""glacier_stac: annual glacier outlines from free multi-sensor satellite data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("glacier_stac")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
