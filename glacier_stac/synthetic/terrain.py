"""Terrain: fractal relief carved into river and glacial valleys, with a fjord on the south edge.

The heavy work (flow routing, valley carving) runs on a coarse grid of at most `COARSE` cells a side
and is upsampled to the world grid, so a 20 km world at 10 m builds in seconds. Relief comes from
spectral synthesis; valleys follow the D8 flow network (priority-flood routing) with steady-state
stream-power channel profiles (slope ~ A^-theta) and U-shaped (parabolic) cross-sections whose width
grows with drainage area. The south edge is the sea: the largest valleys reaching it are cut below
sea level (fjords), so a valley glacier can calve.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import CRS, Transformer
from scipy import ndimage

from glacier_stac.grid import utm_crs

COARSE = 256  # cells a side of the grid the physics runs on


def world_geobox(size_km: float, resolution: float, center_lon: float, center_lat: float) -> GeoBox:
    """Square UTM GeoBox around the centre, pixel edges snapped to multiples of the resolution."""
    epsg = utm_crs(center_lon, center_lat).epsg
    to_utm = Transformer.from_crs(CRS.from_epsg(4326), CRS.from_epsg(epsg), always_xy=True)
    cx, cy = to_utm.transform(center_lon, center_lat)
    n = int(round(size_km * 1000 / resolution))
    x0 = math.floor((cx - n * resolution / 2) / resolution) * resolution
    y1 = math.floor((cy + n * resolution / 2) / resolution) * resolution
    return GeoBox((n, n), Affine(resolution, 0.0, x0, 0.0, -resolution, y1), f"EPSG:{epsg}")


def spectral_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float) -> np.ndarray:
    """Fractal (1/f^beta power spectrum) noise, zero mean and unit std: the raw texture of relief."""
    ny, nx = shape
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = 1.0
    amp = k ** (-beta / 2)
    amp[0, 0] = 0.0
    phase = rng.uniform(0, 2 * np.pi, amp.shape)
    field = np.fft.irfft2(amp * np.exp(1j * phase), s=shape)
    return (field - field.mean()) / field.std()


@dataclass(frozen=True)
class Routing:
    """D8-like flow network from priority-flood: every cell drains to `receiver` (-1 = outlet)."""

    receiver: np.ndarray  # int64 flat index of the downstream cell, -1 at outlets
    order: np.ndarray  # int64 flat indices, every cell after its receiver (outlets first)
    distance: np.ndarray  # float64 (ny, nx) length of the step to the receiver, metres


def flow_routing(z: np.ndarray, outlet: np.ndarray, dx: float) -> Routing:
    """Route flow over `z` to the `outlet` cells through pits (priority-flood, Barnes et al. 2014).

    The cell that first reaches a neighbour is its lowest processed neighbour, so outside pits the
    tree is steepest-descent routing. Pits are breached rather than filled: the flood descends into a
    closed basin along its lowest path, so basin cells drain dendritically towards that path instead
    of along the parallel diagonals of a filled flat. Every cell drains to an outlet.
    """
    ny, nx = z.shape
    w = nx + 2
    zp = np.full((ny + 2, nx + 2), np.inf)
    zp[1:-1, 1:-1] = z
    closed = np.ones((ny + 2, nx + 2), dtype=bool)
    closed[1:-1, 1:-1] = False
    zl = zp.ravel().tolist()
    cl = closed.ravel().tolist()
    rec = [-1] * len(zl)
    oy, ox = np.nonzero(outlet)
    start = ((oy + 1) * w + ox + 1).tolist()
    heap = []
    for i in start:
        cl[i] = True
        heap.append((zl[i], i))
    heapq.heapify(heap)
    offs = (-w - 1, -w, -w + 1, -1, 1, w - 1, w, w + 1)
    order = []
    push, pop = heapq.heappush, heapq.heappop
    while heap:
        zc, c = pop(heap)
        order.append(c)
        for o in offs:
            nb = c + o
            if cl[nb]:
                continue
            cl[nb] = True
            rec[nb] = c
            push(heap, (zl[nb], nb))
    order_p = np.asarray(order, dtype=np.int64)
    rec_p = np.asarray(rec, dtype=np.int64)[order_p]

    def unpad(idx: np.ndarray) -> np.ndarray:
        return (idx // w - 1) * nx + (idx % w - 1)

    order_u = unpad(order_p)
    receiver = np.full(ny * nx, -1, dtype=np.int64)
    has = rec_p >= 0
    receiver[order_u[has]] = unpad(rec_p[has])
    iy, ix = np.divmod(np.arange(ny * nx), nx)
    ry, rx = np.divmod(np.where(receiver >= 0, receiver, np.arange(ny * nx)), nx)
    distance = (np.hypot(iy - ry, ix - rx) * dx).reshape(ny, nx)
    return Routing(receiver, order_u, distance)


def accumulate(values: np.ndarray, routing: Routing, positive_only: bool = False) -> np.ndarray:
    """Sum `values` downstream along the routing; with `positive_only` a cell passes on only a surplus.

    `positive_only` is the ice-flux rule: a cell whose ablation exceeds the ice arriving from above
    passes nothing on (the glacier ends there), so deficits never propagate downstream.
    """
    acc = values.astype(np.float64).ravel().tolist()
    rec = routing.receiver.tolist()
    for c in reversed(routing.order.tolist()):
        r = rec[c]
        if r < 0:
            continue
        v = acc[c]
        if positive_only and v <= 0:
            continue
        acc[r] += v
    return np.asarray(acc).reshape(values.shape)


def upstream_integrate(start: np.ndarray, step: np.ndarray, routing: Routing) -> np.ndarray:
    """Integrate `step` from the outlets upstream: out[c] = out[receiver] + step[c] (outlets: start)."""
    out = start.astype(np.float64).ravel().tolist()
    st = step.ravel().tolist()
    rec = routing.receiver.tolist()
    for c in routing.order.tolist():
        r = rec[c]
        if r >= 0:
            out[c] = out[r] + st[c]
    return np.asarray(out).reshape(start.shape)


def slope_deg(z: np.ndarray, dx: float) -> np.ndarray:
    """Slope in degrees by central differences."""
    gy, gx = np.gradient(z.astype(np.float64), dx)
    return np.degrees(np.arctan(np.hypot(gx, gy)))


def upsample(a: np.ndarray, n: int, order: int = 1) -> np.ndarray:
    """Resample a coarse square grid to n x n with pixel edges aligned (grid_mode)."""
    if a.shape[0] == n:
        return a.copy()
    return ndimage.zoom(a, n / a.shape[0], order=order, grid_mode=True, mode="nearest")


@dataclass
class Terrain:
    """The carved bed on the coarse grid and what the glaciers need from it."""

    bed: np.ndarray  # float64 (nc, nc) metres, sea < 0
    dx: float  # coarse cell size, metres
    routing: Routing
    area: np.ndarray  # drainage area, m^2
    zmax: float  # nominal top of the relief, metres
    coast_dist: np.ndarray  # distance from the south (sea) edge, metres
    balance_elev: np.ndarray | None = None  # elevation the mass balance sees (pre-fjord valley floor)

    @property
    def shape(self) -> tuple[int, int]:
        return self.bed.shape


def relief_top(size_km: float) -> float:
    """Highest nominal summit: ~2800 m in 20 km, less in small worlds so slopes stay plausible."""
    return 2800.0 * min(1.0, size_km / 20.0) ** 0.4


def make_terrain(size_km: float, n_fine: int, rng: np.random.Generator) -> Terrain:
    """Fractal massif rising from a south coast, carved by channels and U-shaped valleys."""
    length = size_km * 1000.0
    nc = min(n_fine, COARSE)
    dx = length / nc
    zmax = relief_top(size_km)
    rows = (np.arange(nc) + 0.5) * dx
    coast_dist = np.broadcast_to((length - rows)[:, None], (nc, nc)).copy()

    # A massif rising inland from a low coast; ridged fractal noise gives peaks and arêtes.
    rise = 1.0 - np.exp(-coast_dist / (0.15 * length))
    base = 200.0 + (0.8 * zmax - 200.0) * rise
    n1 = spectral_noise(rng, (nc, nc), 3.4)
    n2 = spectral_noise(rng, (nc, nc), 2.8)
    ridged = 1.0 - np.abs(n2)  # sharp crests where n2 crosses zero
    ridged = (ridged - ridged.mean()) / ridged.std()
    relief = 0.2 * zmax * n1 + 0.1 * zmax * ridged
    z0 = base + relief * (0.35 + 0.65 * rise)
    z0 = ndimage.gaussian_filter(z0, 0.6)

    outlet = np.zeros((nc, nc), dtype=bool)
    outlet[0, :] = outlet[-1, :] = outlet[:, 0] = outlet[:, -1] = True
    routing = flow_routing(z0, outlet, dx)
    cell = dx * dx
    area = accumulate(np.full((nc, nc), cell), routing)

    # Outlets: on the sea edge the channel mouth is below sea level, deepest for the biggest valley.
    a_ref = 1e6 * (length / 20000.0) ** 2  # 1 km^2 in a 20 km world
    south = np.zeros((nc, nc), dtype=bool)
    south[-1, :] = True
    a_south = area[-1, :].max()
    fjord_depth = 0.04 * zmax  # coves; the glaciers' fjord is cut later (glaciers.drown_fjord)
    # Valleys leaving through the other edges continue down beyond the domain: low mouths there too.
    inland = (0.12 + 0.25 * coast_dist / length) * zmax
    start = np.where(south, -fjord_depth * np.sqrt(area / a_south), np.minimum(z0 - 30.0, inland))
    theta = 0.45
    s_ref = 0.22 * (zmax / 2800.0) / (length / 20000.0) ** 0.6
    step = s_ref * (area / a_ref) ** (-theta) * routing.distance
    z_ch = upstream_integrate(start, step, routing)

    # U-shaped valleys: parabolic floor of half-width w, then walls at a bounded slope. The land is
    # the lower envelope of every channel cell's valley profile, so walls of neighbouring valleys
    # meet in sharp ridges (aretes) and no cliff appears where the nearest channel changes.
    wall = np.clip(0.7 + 0.22 * spectral_noise(rng, (nc, nc), 3.0), 0.45, 1.3)
    z0 = np.minimum(z0 + 0.5 * zmax, 1.1 * zmax)  # the walls shape the land; z0 only caps the summits
    a_c = 1.5 * a_ref
    w0 = 0.011 * length
    z = valley_envelope(z0, z_ch, area, wall, a_c, w0, dx, reach=1.0 * zmax)
    # Spurs, gullies and rock steps: rough relief on the walls, breaking up the planar valley sides.
    wall_mask = np.clip(slope_deg(z, dx) / 30.0, 0.0, 1.0)
    z = z + 0.9 * dx * wall_mask * spectral_noise(rng, (nc, nc), 2.6)  # ~ +-1 cell of relief
    z = ndimage.gaussian_filter(z, 0.7)
    # Re-route on the carved surface, smoothed over a few hundred metres as an ice surface is: ice
    # flowing off broad slopes converges into the valleys instead of along parallel D8 lines.
    routing = flow_routing(ndimage.gaussian_filter(z, 250.0 / dx + 1.0), outlet, dx)
    area = accumulate(np.full((nc, nc), cell), routing)
    return Terrain(bed=z, dx=dx, routing=routing, area=area, zmax=zmax, coast_dist=coast_dist,
                   balance_elev=z.copy())


def valley_envelope(cap: np.ndarray, floor: np.ndarray, area: np.ndarray, wall: np.ndarray, a_c: float,
                    w0: float, dx: float, reach: float) -> np.ndarray:
    """Lower envelope of U-shaped valley profiles around every channel cell (area >= a_c).

    Each channel cell c lowers the land around it to floor_c + h (d/w)^2 inside its half-width w and
    floor_c + h + wall (d - w) beyond (h = wall w / 2, so the slope is continuous); `reach` metres of
    wall height bound the window. Brute force over windows is cheap on the coarse grid.
    """
    z = cap.copy()
    ny, nx = z.shape
    ys, xs = np.nonzero(area >= a_c)
    if ys.size == 0:
        return z
    w_all = np.clip(w0 * (area[ys, xs] / a_c) ** 0.3, w0, 6.0 * w0)
    r = int(np.ceil((reach / 0.6 + w_all.max()) / dx))
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    dist = np.hypot(oy, ox) * dx
    for y, x, w in zip(ys.tolist(), xs.tolist(), w_all.tolist(), strict=True):
        y0, y1, x0, x1 = max(y - r, 0), min(y + r + 1, ny), max(x - r, 0), min(x + r + 1, nx)
        d = dist[y0 - y + r:y1 - y + r, x0 - x + r:x1 - x + r]
        s = wall[y, x] * (1.0 + 0.5 * min(1.0, a_c / area[y, x]))  # cirque headwalls are steepest
        h = s * w / 2.0
        prof = np.where(d < w, floor[y, x] + h * (d / w) ** 2, floor[y, x] + h + s * (d - w))
        np.minimum(z[y0:y1, x0:x1], prof, out=z[y0:y1, x0:x1])
    return z


def fine_relief(terrain: Terrain, n: int, resolution: float, rng: np.random.Generator) -> np.ndarray:
    """The coarse bed upsampled to the world grid plus metre-scale roughness (rougher where steep)."""
    z = upsample(terrain.bed, n, order=3)
    rough = spectral_noise(rng, (n, n), 2.6)
    steep = np.clip(slope_deg(z, resolution) / 40.0, 0.0, 1.5)
    amp = (3.0 + 6.0 * steep) * min(1.0, resolution / 10.0) ** 0.5
    return (z + amp * rough).astype(np.float64)


def sea_mask(elevation: np.ndarray, blocked: np.ndarray | None = None) -> np.ndarray:
    """Cells below sea level connected to the south edge (not through `blocked` cells, e.g. ice)."""
    wet = elevation < 0
    if blocked is not None:
        wet &= ~blocked
    lab, _ = ndimage.label(wet)
    ids = np.unique(lab[-1, :])
    ids = ids[ids > 0]
    return np.isin(lab, ids)
