"""What each surface class looks like to each sensor, and where the sun is.

Tables of published-order-of-magnitude values (snow/ice reflectance after Dozier 1989 and the
ASTER/USGS spectral libraries, C-band backscatter after Nagler & Rott, debris surface temperature
after Mihalcea et al.), plus the sun and illumination geometry the optical and thermal renderers need.
Pure functions on arrays: nothing here knows about files, STAC or randomness seeds.
"""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np

from glacier_stac.synthetic.config import Thermal
from glacier_stac.synthetic.world import Surface

S2_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")

# Bottom-of-atmosphere reflectance per class, bands B02 B03 B04 B08 B11 B12.
# Snow: bright in the visible, nearly black at 1.6/2.2 um (NDSI ~0.9); clean ice darker but still low SWIR;
# debris and rock flat and dark (NDSI < 0); vegetation with the red edge; water dark everywhere.
REFLECTANCE: dict[int, tuple[float, ...]] = {
    Surface.ROCK: (0.10, 0.12, 0.14, 0.18, 0.24, 0.20),
    Surface.SCREE: (0.13, 0.15, 0.17, 0.21, 0.27, 0.23),
    Surface.VEGETATION: (0.03, 0.06, 0.04, 0.34, 0.17, 0.08),
    Surface.LAKE: (0.07, 0.10, 0.08, 0.03, 0.010, 0.006),  # turbid glacial meltwater
    Surface.SEA: (0.04, 0.05, 0.03, 0.02, 0.008, 0.005),
    Surface.SEA_ICE: (0.72, 0.71, 0.69, 0.60, 0.08, 0.06),
    Surface.SNOW: (0.88, 0.87, 0.85, 0.74, 0.05, 0.035),  # wet late-summer snow
    Surface.ICE: (0.55, 0.52, 0.46, 0.30, 0.03, 0.02),
    Surface.DEBRIS: (0.10, 0.11, 0.125, 0.16, 0.20, 0.17),
    # Moraine is the same rock the glacier carried: optically identical to debris-covered ice (only
    # thermal, SAR texture/change and terrain set them apart, as in real mountains).
    Surface.MORAINE: (0.10, 0.11, 0.125, 0.16, 0.20, 0.17),
    # Rock glaciers are the talus of the headwall above them, crept downhill: optically scree.
    Surface.ROCK_GLACIER: (0.13, 0.15, 0.17, 0.21, 0.27, 0.23),
}
FIRN = (0.70, 0.68, 0.64, 0.52, 0.04, 0.03)  # old snow at the snowline, between snow and ice
CLOUD = (0.78, 0.77, 0.76, 0.74, 0.55, 0.40)  # clouds stay bright in the SWIR (unlike snow)

# Sentinel-1 gamma0 in dB (VV, VH) per class, late-summer conditions (wet snow absorbs C-band).
BACKSCATTER_DB: dict[int, tuple[float, float]] = {
    Surface.ROCK: (-8.5, -15.5),
    Surface.SCREE: (-9.5, -16.5),
    Surface.VEGETATION: (-10.5, -16.0),
    Surface.LAKE: (-21.0, -28.0),
    Surface.SEA: (-18.0, -27.0),
    Surface.SEA_ICE: (-6.5, -13.5),  # rough ice melange and brash: bright
    Surface.SNOW: (-19.5, -26.0),  # wet snow: dark
    Surface.ICE: (-14.5, -22.5),
    Surface.DEBRIS: (-9.5, -16.8),  # close to rock; set apart only by texture (cliffs, ponds)
    Surface.MORAINE: (-9.5, -16.5),  # loose rock like scree: no ice cliffs, no ponds, no change
    Surface.ROCK_GLACIER: (-9.0, -16.0),  # coarse blocks, a little rougher than scree; creep changes it yearly
}

# Surface temperature (K) at sea level for a flat surface facing the sun; see `surface_temperature`.
LAPSE_K_PER_M = Thermal().lapse  # maritime land-surface temperature lapse rate (each regime has its own)


def solar_position(when: datetime, lat: float, lon: float) -> tuple[float, float]:
    """(zenith, azimuth) in degrees for a UTC time; azimuth clockwise from north.

    A declination/hour-angle approximation (good to ~1 degree), enough to light a synthetic DEM.
    """
    doy = when.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365.0)
    solar_hours = when.hour + when.minute / 60 + when.second / 3600 + lon / 15.0
    h = math.radians(15.0 * (solar_hours - 12.0))
    phi = math.radians(lat)
    cos_z = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(h)
    zenith = math.degrees(math.acos(max(-1.0, min(1.0, cos_z))))
    az = math.degrees(math.atan2(math.sin(h), math.cos(h) * math.sin(phi) - math.tan(decl) * math.cos(phi)))
    return zenith, (az + 180.0) % 360.0


def surface_normals(elevation: np.ndarray, resolution: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit normal (east, north, up) per pixel; rows run north to south as in a north-up raster."""
    dz_drow, dz_dcol = np.gradient(elevation.astype(np.float32), resolution)
    ne, nn, nu = -dz_dcol, dz_drow, np.ones_like(dz_dcol)  # d/dnorth = -d/drow
    norm = np.sqrt(ne * ne + nn * nn + 1.0)
    return ne / norm, nn / norm, nu / norm


def cos_incidence(normals: tuple[np.ndarray, ...], zenith: float, azimuth: float) -> np.ndarray:
    """Cosine of the angle between the surface normal and a direction (zenith, azimuth in degrees)."""
    z, a = math.radians(zenith), math.radians(azimuth)
    se, sn, su = math.sin(z) * math.sin(a), math.sin(z) * math.cos(a), math.cos(z)
    ne, nn, nu = normals
    return (ne * se + nn * sn + nu * su).astype(np.float32)


def illumination_factor(cos_i: np.ndarray, zenith: float, diffuse: float = 0.12) -> np.ndarray:
    """Brightness relative to a flat pixel: direct (cos i / cos z) plus a diffuse sky share.

    Multiplies every band alike, so band ratios (NDSI) survive topography, as on real scenes.
    """
    direct = np.clip(cos_i, 0.0, None) / max(math.cos(math.radians(zenith)), 0.1)
    return np.clip((1.0 - diffuse) * direct + diffuse, 0.05, 2.5).astype(np.float32)


def reflectance_table() -> np.ndarray:
    """(n_classes, 6) lookup array indexed by Surface code."""
    n = max(int(s) for s in Surface) + 1
    table = np.zeros((n, len(S2_BANDS)), dtype=np.float32)
    for cls, values in REFLECTANCE.items():
        table[int(cls)] = values
    return table


def backscatter_table() -> np.ndarray:
    """(n_classes, 2) linear gamma0 (VV, VH) indexed by Surface code."""
    n = max(int(s) for s in Surface) + 1
    table = np.zeros((n, 2), dtype=np.float32)
    for cls, (vv, vh) in BACKSCATTER_DB.items():
        table[int(cls)] = (10 ** (vv / 10), 10 ** (vh / 10))
    return table


def surface_temperature(
    classes: np.ndarray, elevation: np.ndarray, cos_i: np.ndarray, debris_field: np.ndarray,
    thermal: Thermal | None = None,
) -> np.ndarray:
    """Land surface temperature (K) of a late-summer mid-morning scene in a regime's climate (`thermal`).

    Ice and snow are pinned near melting point; debris over ice sits between ice and rock (warmer
    where thicker: `debris_field` in [0, 1]) and cools with height more slowly than rock; sunlit rock,
    scree and ice-free moraine are warmest at a given height and cool with the regime's lapse rate;
    rock glaciers are that rock `thermal.rock_glacier_dt` cooler (ice a few metres under the blocks).
    The default is the maritime regime (sea level to ~3000 m).
    """
    th = thermal or Thermal()
    z = np.clip(elevation, 0, None)
    lit = np.clip(cos_i, 0, 1) - 0.6
    t = np.full(classes.shape, 293.0, dtype=np.float32)
    rock = np.isin(classes, (Surface.ROCK, Surface.SCREE, Surface.MORAINE))  # no ice under moraine: warm
    t[rock] = (th.rock_t0 - th.lapse * z + 9.0 * lit)[rock]
    rg = classes == Surface.ROCK_GLACIER
    if rg.any():
        t[rg] = (th.rock_t0 - th.rock_glacier_dt - th.lapse * z + 9.0 * lit)[rg]
    veg = classes == Surface.VEGETATION
    t[veg] = (th.veg_t0 - th.lapse * z + 4.0 * lit)[veg]
    deb = classes == Surface.DEBRIS
    t[deb] = (th.debris_t0 + th.debris_k * debris_field - th.debris_lapse * z + 2.0 * lit)[deb]
    t[classes == Surface.ICE] = 273.0
    t[classes == Surface.SNOW] = 272.6
    t[classes == Surface.SEA_ICE] = 271.8
    t[classes == Surface.LAKE] = 277.0
    t[classes == Surface.SEA] = 279.0
    return t


def cast_shadow(
    elevation: np.ndarray, resolution: float, zenith: float, azimuth: float, coarse: int = 4, max_steps: int = 64
) -> np.ndarray:
    """Pixels hidden from the sun by terrain in the sun's direction (a horizon march on a coarser DEM).

    Self-shadow (cos i <= 0) is handled by `cos_incidence`; this adds the shadows that ridges cast
    across valley floors, which are what darken real glacier tongues in the morning.
    """
    h, w = elevation.shape
    z = elevation[::coarse, ::coarse].astype(np.float32)
    res = resolution * coarse
    tan_elev = math.tan(math.radians(max(90.0 - zenith, 1.0)))
    relief = float(z.max() - z.min())
    reach = min(relief / tan_elev / res, float(max(z.shape)))
    if reach < 1:
        return np.zeros((h, w), dtype=bool)
    a = math.radians(azimuth)
    dcol, drow = math.sin(a), -math.cos(a)  # towards the sun; rows grow southwards
    dists = np.unique(np.round(np.geomspace(1.0, reach, num=max_steps)).astype(int))
    shadow = np.zeros(z.shape, dtype=bool)
    zh, zw = z.shape
    for d in dists:
        r, c = int(round(d * drow)), int(round(d * dcol))
        if abs(r) >= zh or abs(c) >= zw:
            break
        # horizon[p] = z[p + (r, c)] where that lies inside the grid
        rows_dst = slice(max(0, -r), zh - max(0, r))
        cols_dst = slice(max(0, -c), zw - max(0, c))
        rows_src = slice(max(0, r), zh - max(0, -r))
        cols_src = slice(max(0, c), zw - max(0, -c))
        blocked = z[rows_src, cols_src] - z[rows_dst, cols_dst] > d * res * tan_elev
        shadow[rows_dst, cols_dst] |= blocked
    full = np.repeat(np.repeat(shadow, coarse, axis=0), coarse, axis=1)
    return full[:h, :w]
