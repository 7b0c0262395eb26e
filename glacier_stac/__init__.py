"""glacier_stac: annual glacier outlines from free multi-sensor satellite data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("glacier_stac")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    """`glacier_stac.open_predictions` without importing the heavy stack on `import glacier_stac`."""
    if name == "open_predictions":
        from glacier_stac.store import open_predictions

        return open_predictions
    raise AttributeError(f"module 'glacier_stac' has no attribute {name!r}")
