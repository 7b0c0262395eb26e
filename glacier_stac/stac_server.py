"""Moved to `glacier_stac.testing.stac_server`; this name keeps existing imports working (same module object)."""

import sys

from glacier_stac.testing import stac_server as _moved

sys.modules[__name__] = _moved
