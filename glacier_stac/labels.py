"""The product's vocabulary: output classes and their codes, and the names of output variables.

Everything in the project imports this module; it imports nothing of the project, so the synthetic
world, the models, the metrics and the store agree on one set of codes without depending on each other.
"""

from __future__ import annotations

from enum import IntEnum


class Label(IntEnum):
    """Classes of the truth rasters, of the models' output and of the stored `classes` array."""

    BACKGROUND = 0
    CLEAN_ICE = 1  # snow/firn and clean ice on a glacier
    DEBRIS_ICE = 2
    WATER = 3  # lakes and sea (not sea ice)
    ROCK_GLACIER = 4  # permafrost debris with ice inside: its own landform, never glacier area (as in RGI)


CLASSES: tuple[str, ...] = tuple(label.name.lower() for label in Label)
# The classes of every checkpoint made before rock glaciers (and of the NDSI baseline). A checkpoint's
# classes are always a prefix of CLASSES, so a model's output index is the Label code.
BASE_CLASSES: tuple[str, ...] = CLASSES[:4]
# values of an outlines' class column that mean a rock glacier (compared lower-case)
ROCK_GLACIER_NAMES: tuple[str, ...] = ("rock glacier", "rock_glacier", "rockglacier", "rock-glacier", "4")
# A class decided inside its parent: the class map first chooses among the other classes, a subclass's
# probability counted in its parent's, then between the parent and its subclass. Rock glaciers are one kind
# of non-glacier ground, so whether a pixel is glacier does not hang on how the rest of it splits, and a
# rock-glacier branch beside a four-class model leaves that model's class map as it was (issue 14).
PARENT: dict[Label, Label] = {Label.ROCK_GLACIER: Label.BACKGROUND}
GLACIER_CLASSES: tuple[str, ...] = ("clean_ice", "debris_ice")  # summed into the glacier probability
NODATA_CLASS = 255  # `classes` where no valid input reached the model

# output variables of a prediction and of the Zarr store
PROBABILITY = "probability"  # per-class probabilities in a prediction; glacier probability in the store
GLACIER_PROBABILITY = "glacier_probability"
CLASSES_VAR = "classes"
VALID = "valid"
