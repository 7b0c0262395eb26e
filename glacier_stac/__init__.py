"""glacier_stac: annual glacier outlines from free multi-sensor satellite data."""

from glacier_stac.version import __version__

__all__ = ["__version__", "open_predictions"]


def __getattr__(name: str):
    """`glacier_stac.open_predictions` without importing the heavy stack on `import glacier_stac`."""
    if name == "open_predictions":
        from glacier_stac.store import open_predictions

        return open_predictions
    raise AttributeError(f"module 'glacier_stac' has no attribute {name!r}")
