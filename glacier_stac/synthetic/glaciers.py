"""Glaciers that follow the terrain: mass balance, ice routed down the flow network, yearly retreat.

On the coarse terrain grid a linear mass-balance profile b(z) = gradient * (z - ELA), capped in the
accumulation area, is routed downstream along the flow network: a cell passes ice on only while the
flux arriving from above exceeds its own ablation (ablation counted over the glacier's width). Ice
therefore only exists above the ELA or on tongues fed from an accumulation area. Thickness comes
from the shallow-ice flux law; the smoothed ice surface of the flowlines fills the U-shaped valleys
sideways up to the glacier's width, which turns D8 lines into valley and cirque glaciers. Glacier
ids are drainage basins of ice: every ice cell belongs to the terminus its ice flows to.

`simulate` then moves to the world grid: one glacier's lower tongue is cut into a fjord (it calves),
rockfall below steep headwalls covers tongues with debris, lakes fill overdeepened termini, and each
year a higher ELA makes the glaciers retreat by a calibrated fraction of their area.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from glacier_stac.synthetic.config import Surface, WorldConfig
from glacier_stac.synthetic.terrain import Routing, Terrain, accumulate

SECONDS_PER_YEAR = 365.25 * 86400
GLEN_A = 2.4e-24  # Pa^-3 s^-1, temperate ice
RHO_G = 917.0 * 9.81


@dataclass(frozen=True)
class MassBalance:
    """Mass-balance profile parameters (metres of ice per year)."""

    ela: np.ndarray  # (ny, nx) equilibrium-line altitude, metres (maritime: lower near the coast)
    gradient: float = 0.007  # m ice / yr per metre of elevation
    b_max: float = 3.0  # cap in the accumulation area, m / yr
    calving: float = 0.005  # extra loss per metre of water depth, m / yr (fjord termini)


@dataclass
class IceState:
    """Coarse-grid glacier state for one climate."""

    flux: np.ndarray  # m^3 ice / yr leaving each flowline cell (<= 0: no ice passed on)
    active: np.ndarray  # bool, flowline cells carrying ice
    surface: np.ndarray  # ice surface of the nearest flowline cell, metres (everywhere)
    depth: np.ndarray  # signed ice depth: > 0 inside the glacier, < 0 outside (smooth across the margin)
    terminus: np.ndarray  # int64 flat index of the terminus each cell's ice flows to (nearest flowline)
    width: np.ndarray  # glacier width at the nearest flowline cell, metres
    taper: np.ndarray  # cap on the depth that thins the ice towards the side margins, metres


def glacier_width(flux: np.ndarray | float, dx: float) -> np.ndarray | float:
    """Valley-glacier width from ice flux: ~1.2 km at 1e7 m^3/yr, never narrower than a cell."""
    return np.clip(0.3 * np.sqrt(np.maximum(flux, 0.0)), dx, 2000.0)


def route_ice(bed: np.ndarray, routing: Routing, mb: MassBalance, dx: float,
              balance_elev: np.ndarray | None = None) -> np.ndarray:
    """Ice flux leaving each cell (m^3/yr): accumulate the balance downstream, pass on only surpluses."""
    z = bed if balance_elev is None else balance_elev
    b = mb.gradient * (np.maximum(z, 0.0) - mb.ela)
    b = np.minimum(b, mb.b_max) - mb.calving * np.maximum(-bed, 0.0)
    bl = b.ravel().tolist()
    dist = np.maximum(routing.distance, dx).ravel().tolist()
    rec = routing.receiver.tolist()
    q_in = [0.0] * len(bl)
    q_out = [0.0] * len(bl)
    cell = dx * dx
    for c in reversed(routing.order.tolist()):
        qi = q_in[c]
        bc = bl[c]
        if bc >= 0:
            q = qi + bc * cell
        else:  # a tongue ablates over its whole width, not over one cell
            w = 0.3 * qi**0.5 if qi > 0 else dx
            q = qi + bc * dist[c] * min(max(w, dx), 2000.0)
        q_out[c] = q
        r = rec[c]
        if q > 0 and r >= 0:
            q_in[r] += q
    return np.asarray(q_out).reshape(bed.shape)


def ice_state(terrain: Terrain, mb: MassBalance, flat_slope: np.ndarray | None = None) -> IceState:
    """Flux, thickness, lateral extent and glacier basins for one mass-balance profile."""
    bed, dx, routing = terrain.bed, terrain.dx, terrain.routing
    flux = route_ice(bed, routing, mb, dx, terrain.balance_elev)
    slope = flat_slope if flat_slope is not None else smoothed_slope(bed, dx)
    # Ice does not stay on cliffs: flux crosses them (avalanches, icefalls) but only big flux sticks.
    # A continuous allowance (metres of ice) keeps the cliff margins smooth on the fine grid.
    cliff = (52.0 - slope) * 20.0 + 200.0 * np.clip(flux / 2e5, 0.0, 1.0)
    active = (flux > 0) & (cliff > 0)
    width = glacier_width(flux, dx)
    q = np.maximum(flux, 0.0) / width / SECONDS_PER_YEAR  # m^2/s per unit width
    sin_a = np.clip(np.sin(np.radians(slope)), 0.03, 1.0)
    thick = (5.0 * q / (2.0 * GLEN_A * (RHO_G * sin_a) ** 3)) ** 0.2
    thick = np.clip(thick, 0.0, 700.0)

    term = np.arange(bed.size, dtype=np.int64)
    rec = routing.receiver
    act = active.ravel()
    tl = term.tolist()
    rl = rec.tolist()
    al = act.tolist()
    for c in routing.order.tolist():
        r = rl[c]
        if r >= 0 and al[c] and al[r]:
            tl[c] = tl[r]
    term = np.asarray(tl, dtype=np.int64).reshape(bed.shape)

    if not active.any():
        neg = np.full(bed.shape, -1e3)
        return IceState(flux, active, bed.copy(), neg, np.full(bed.shape, -1), np.full(bed.shape, dx), neg)
    d, (iy, ix) = ndimage.distance_transform_edt(~active, sampling=dx, return_indices=True)
    surf_line = bed + thick
    # Ice flows as a sheet, not along D8 lines: its surface is a smooth (normalised Gaussian)
    # average of the flowline surfaces, falling back to the nearest flowline far from any.
    wsum = ndimage.gaussian_filter(active.astype(np.float64), 3.0)
    avg = ndimage.gaussian_filter(np.where(active, surf_line, 0.0), 3.0) / np.maximum(wsum, 1e-12)
    near = surf_line[iy, ix]
    blend = np.clip(wsum / 0.05, 0.0, 1.0)
    surface = ndimage.gaussian_filter(blend * avg + (1.0 - blend) * near, 1.0)
    w_near = width[iy, ix]
    # Side taper: ice thins towards the margin of the widest nearby glacier. An envelope over width
    # classes (not just the nearest flowline) keeps the wide tongues' margins smooth.
    reach = 0.4 * (w_near / 2.0 - d) + 1.0
    for w_min in (300.0, 700.0, 1200.0):
        wide = active & (width >= w_min)
        if wide.any():
            dk, (ky, kx) = ndimage.distance_transform_edt(~wide, sampling=dx, return_indices=True)
            reach = np.maximum(reach, 0.4 * (width[ky, kx] / 2.0 - dk) + 1.0)
    # On cliffs only a big glacier's icefall holds ice, as wide as that glacier's flowline is.
    cliff_near = (52.0 - slope) * 20.0 + 300.0 * np.clip(flux[iy, ix] / 2e5, 0.0, 1.0)
    taper = np.minimum(ndimage.gaussian_filter(reach, 1.0), ndimage.gaussian_filter(cliff_near, 1.0))
    depth = np.minimum(surface - bed, taper)
    return IceState(flux, active, surface, depth, term[iy, ix], w_near, taper)


def smoothed_slope(bed: np.ndarray, dx: float) -> np.ndarray:
    """Surface slope the ice feels (degrees): bed slope smoothed over a few ice thicknesses."""
    gy, gx = np.gradient(ndimage.gaussian_filter(bed, 3.0), dx)
    return np.degrees(np.arctan(np.hypot(gx, gy)))


def ela_field(terrain: Terrain, ela0: float) -> np.ndarray:
    """Maritime ELA: lowest at the coast, rising inland (snowfall comes from the sea)."""
    rise = 0.25 * terrain.zmax * terrain.coast_dist / terrain.coast_dist.max()
    return ela0 + rise


def coverage_ela(terrain: Terrain, target: float, iters: int = 14) -> float:
    """Base ELA at which glaciers cover `target` of the land (a regional, Chugach-like ice cover)."""
    land = terrain.bed >= 0
    lo, hi = 0.0, terrain.zmax
    slope = smoothed_slope(terrain.bed, terrain.dx)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        st = ice_state(terrain, MassBalance(ela_field(terrain, mid)), slope)
        frac = ((st.depth > 0) & land).sum() / max(land.sum(), 1)
        if frac > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def glacier_basins(terrain: Terrain, st: IceState, min_area: float) -> np.ndarray:
    """Glacier id (1..N, largest first) per coarse cell of ice, 0 elsewhere.

    Ice basins (cells sharing a terminus) that spill over a cliff onto another glacier join it, as
    an icefall-fed tributary does; what is left smaller than `min_area` (m^2) is dropped.
    """
    ice = st.depth > 0
    rec = terrain.routing.receiver.tolist()
    act = st.active.ravel().tolist()
    term = st.terminus.ravel()
    tl = term.tolist()
    # The glacier that each cell's flow meets first downstream (-1: none).
    down = [-1] * len(rec)
    for c in terrain.routing.order.tolist():
        r = rec[c]
        if r >= 0:
            down[c] = tl[r] if act[r] else down[r]
    parent: dict[int, int] = {}
    for t in np.unique(term[ice.ravel()]).tolist():
        d = down[t]
        if d >= 0 and d != t:
            parent[t] = d

    def root(t: int) -> int:
        seen = 0
        while t in parent and seen < 10000:
            t = parent[t]
            seen += 1
        return t

    basin = np.where(ice.ravel(), term, -1)
    roots = {t: root(t) for t in np.unique(basin[basin >= 0]).tolist()}
    lut_keys = np.array(list(roots), dtype=np.int64)
    lut_vals = np.array([roots[k] for k in roots], dtype=np.int64)
    merged = np.full(basin.shape, -1, dtype=np.int64)
    if lut_keys.size:
        pos = np.searchsorted(lut_keys, basin.clip(0))
        pos = pos.clip(0, lut_keys.size - 1)
        ok = (basin >= 0) & (lut_keys[pos] == basin)
        merged[ok] = lut_vals[pos[ok]]
    ids, counts = np.unique(merged[merged >= 0], return_counts=True)
    keep = counts * terrain.dx**2 >= min_area
    ids, counts = ids[keep], counts[keep]
    rank = ids[np.argsort(-counts, kind="stable")]
    out = np.zeros(basin.shape, dtype=np.int32)
    for new, old in enumerate(rank.tolist(), start=1):
        out[merged == old] = new
    return out.reshape(terrain.shape)


def drown_fjord(terrain: Terrain, st: IceState, gid: np.ndarray, depth: float, reach_up: float = 0.8,
                choice: int = 0, ela: np.ndarray | None = None) -> tuple[Terrain, int, np.ndarray]:
    """Cut a fjord below sea level from the lower tongue of the biggest south-draining glacier.

    The valley below that glacier's terminus, and the lowest part of its tongue, sink under the sea
    (relative sea level is a free choice), so the glacier ends in deep water. The glaciers keep
    flowing over the old land surface; only the bed (thickness, water) sees the fjord.
    `choice` picks the n-th largest candidate glacier. Returns the new terrain, the glacier's id and
    its main flowline above the fjord (bool mask).
    """
    nx = terrain.shape[1]
    rec = terrain.routing.receiver
    ice = gid.ravel() > 0
    found: list[tuple[float, int, list[int]]] = []
    for g in range(1, int(gid.max()) + 1):
        cells = np.nonzero(gid.ravel() == g)[0]
        act = cells[st.active.ravel()[cells]]
        if act.size == 0:
            continue
        t = int(act[np.argmin(terrain.bed.ravel()[act])])  # lowest flowline cell: the terminus
        path = [t]
        c = t
        while rec[c] >= 0:
            c = int(rec[c])
            path.append(c)
        if c // nx != terrain.shape[0] - 1:
            continue  # drains off another edge
        if any(ice[p] and gid.ravel()[p] != g for p in path):
            continue  # runs into another glacier
        found.append((float(cells.size), g, path))
    found.sort(key=lambda f: -f[0])
    best, best_area, best_path = 0, 0.0, None
    if found:
        best_area, best, best_path = found[min(choice, len(found) - 1)]
    if best_path is None:  # nothing drains south: run a fjord due south from the lowest terminus
        best = int(gid.ravel()[np.argmax(np.where(gid.ravel() > 0, terrain.coast_dist.ravel() * -1.0, -np.inf))])
        cells = np.nonzero((gid.ravel() == best) & st.active.ravel())[0]
        cells = cells if cells.size else np.nonzero(gid.ravel() == best)[0]
        t = int(cells[np.argmax(cells // nx)])
        best_area = float((gid == best).sum())
        best_path = [t + k * nx for k in range(terrain.shape[0] - t // nx)]
    # Extend the fjord up-glacier along the main flowline for part of the tongue.
    area = terrain.area.ravel()
    donors: dict[int, list[int]] = {}
    for i, r in enumerate(rec.tolist()):
        if r >= 0 and gid.ravel()[i] == best and st.active.ravel()[i]:
            donors.setdefault(r, []).append(i)
    up = []
    c = best_path[0]
    tongue_len = reach_up * np.sqrt(best_area) * terrain.dx  # how far up-glacier the fjord reaches
    dist = 0.0
    while donors.get(c) and dist < tongue_len:
        c = max(donors[c], key=lambda i: area[i])
        dist += terrain.routing.distance.ravel()[c]
        up.append(c)
    path = np.array(up[::-1] + best_path, dtype=np.int64)
    # The glacier's main flowline from the fjord head up to its accumulation area, across icefalls:
    # the fine grid keeps an ice corridor along it so the tongue stays fed.
    trunk = list(up)
    all_donors: dict[int, list[int]] = {}
    for i, r in enumerate(rec.tolist()):
        if r >= 0:
            all_donors.setdefault(r, []).append(i)
    gflat = gid.ravel()
    while all_donors.get(c) and len(trunk) < terrain.bed.size:
        c = max(all_donors[c], key=lambda i: area[i])
        trunk.append(c)
        if ela is not None and gflat[c] == best and terrain.bed.ravel()[c] > ela.ravel()[c] + 50.0:
            break
    trunk_mask = np.zeros(terrain.bed.size, dtype=bool)
    trunk_mask[np.asarray(trunk + best_path[:1], dtype=np.int64)] = True
    steps = terrain.routing.distance.ravel()[path]
    s = np.concatenate([[0.0], np.cumsum(steps[1:])])
    frac = s / max(s[-1], 1.0)
    floor = -30.0 - depth * np.sqrt(frac)  # deepening towards the mouth
    line = np.zeros(terrain.bed.size, dtype=bool)
    line[path] = True
    fl = np.full(terrain.bed.size, np.inf)
    fl[path] = floor
    d, (iy, ix) = ndimage.distance_transform_edt(~line.reshape(terrain.shape), sampling=terrain.dx,
                                                 return_indices=True)
    half = 0.5 * glacier_width(st.flux.ravel()[path].max(), terrain.dx)
    near = fl.reshape(terrain.shape)[iy, ix]
    prof = np.where(d < half, near + 0.5 * half * (d / half) ** 2, near + 0.5 * half + 0.9 * (d - half))
    bed = np.minimum(terrain.bed, ndimage.gaussian_filter(prof, 1.5))
    new = Terrain(bed=bed, dx=terrain.dx, routing=terrain.routing, area=terrain.area, zmax=terrain.zmax,
                  coast_dist=terrain.coast_dist, balance_elev=np.maximum(terrain.balance_elev, 0.0))
    return new, best, trunk_mask.reshape(terrain.shape)


def debris_index(terrain: Terrain, st: IceState, ela: np.ndarray) -> np.ndarray:
    """Where rockfall from steep headwalls melts out on the tongue, 0..~1 (grows downstream).

    Steep ice-free slopes next to a glacier shed rock onto it; the load travels with the ice
    (accumulated down the flow network) and emerges below the ELA as melt concentrates it.
    """
    slope = smoothed_slope(terrain.bed, terrain.dx)
    ice = st.depth > 0
    near_ice = ndimage.binary_dilation(ice, iterations=3)
    supply = ((slope > 33.0) & ~ice & near_ice).astype(np.float64) * (slope / 45.0)
    # Rock enters the glacier where the slope meets the ice: route it along the flow network.
    load = accumulate(supply, terrain.routing)
    _, (iy, ix) = ndimage.distance_transform_edt(~st.active, return_indices=True)
    load_ice = load[iy, ix]
    ref = np.quantile(load_ice[ice], 0.9) if ice.any() else 1.0
    emerge = np.clip((ela - terrain.balance_elev) / (0.2 * terrain.zmax), 0.0, 1.0)
    return ndimage.gaussian_filter(np.sqrt(load_ice / max(ref, 1e-9)) * emerge, 1.0)


# --- The world on the fine grid, year by year --------------------------------------------------

DEBRIS_THRESHOLD = {"easy": 1.1, "normal": 0.9, "hard": 0.75}  # lower: more debris cover
COVERAGE = 0.45  # fraction of the land under ice in the first year (maritime; each Regime sets its own)
ELA_RISE = 0.008  # per year, as a fraction of the relief: climate warming drives the retreat


@dataclass
class Simulation:
    """Everything the simulation knows, for tests and the world builder."""

    terrain: Terrain
    bed: np.ndarray  # fine bed, metres
    ela0: float
    ela_rise: float  # metres per year
    tidewater: int  # glacier id cut into the fjord
    debris_glacier: int  # glacier with a largely debris-covered tongue (0: none)
    lake_glaciers: tuple[int, ...]
    ice: dict[int, np.ndarray]  # year -> bool
    ids: dict[int, np.ndarray]  # year -> int32
    thickness: dict[int, np.ndarray]  # year -> float32
    surface: dict[int, np.ndarray]  # year -> uint8 Surface
    ela: dict[int, np.ndarray]  # year -> fine ELA field (metres)
    area_loss: dict[int, float]  # year -> fraction of the previous year's ice area lost


def _fine_ela(terrain: Terrain, ela0: float, n: int) -> np.ndarray:
    from glacier_stac.synthetic.terrain import upsample

    return upsample(ela_field(terrain, ela0), n)


def _warped_nearest(a: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Nearest-neighbour upsampling through a smooth random warp, so coarse borders look natural."""
    from glacier_stac.synthetic.terrain import spectral_noise

    nc = a.shape[0]
    scale = nc / n
    warp_y = 0.7 * spectral_noise(rng, (n, n), 3.5)
    warp_x = 0.7 * spectral_noise(rng, (n, n), 3.5)
    idx = (np.arange(n) + 0.5) * scale - 0.5
    yy = np.clip(np.rint(idx[:, None] + warp_y), 0, nc - 1).astype(np.intp)
    xx = np.clip(np.rint(idx[None, :] + warp_x), 0, nc - 1).astype(np.intp)
    return a[yy, xx]


def _remove_specks(ice: np.ndarray, min_px: int, elev: np.ndarray | None = None,
                   ela: np.ndarray | None = None) -> np.ndarray:
    """Drop ice bodies under `min_px` pixels and, given `elev`/`ela`, dead ice cut off below the ELA."""
    lab, nlab = ndimage.label(ice, structure=np.ones((3, 3), bool))
    if nlab == 0:
        return ice
    drop = np.bincount(lab.ravel()) < min_px
    if elev is not None and ela is not None:
        top = ndimage.maximum(elev - ela, lab, index=np.arange(nlab + 1))
        drop |= np.asarray(top) < 0
    drop[0] = False
    return ice & ~drop[lab]


def _retreat(ice_prev: np.ndarray, depth: np.ndarray, loss_range: tuple[float, float],
             rng: np.random.Generator, min_px: int, elev: np.ndarray, ela: np.ndarray,
             ) -> tuple[np.ndarray, float]:
    """Next year's ice: the thinnest ice under the warmer climate melts away first.

    `depth` is the signed ice depth of the new steady state; the cut-off is chosen (quantile, then
    corrected) so the area lost lies in `loss_range`, which makes the yearly change exact and known.
    """
    lo, hi = loss_range
    n_prev = int(ice_prev.sum())
    if hi <= 0 or n_prev == 0:
        return ice_prev.copy(), 0.0
    target = rng.uniform(lo + 0.3 * (hi - lo), hi - 0.3 * (hi - lo))
    vals = depth[ice_prev]
    f = target
    best = ice_prev.copy()
    loss = 0.0
    for _ in range(8):
        cut = np.quantile(vals, min(max(f, 0.0), 0.99))
        ice = _remove_specks(ice_prev & (depth > cut), min_px, elev, ela)
        loss = 1.0 - ice.sum() / n_prev
        best = ice
        if lo <= loss <= hi:
            break
        f -= loss - target  # specks removed on top of the cut: aim lower
    return best, float(loss)


def _carve_lakes(bed: np.ndarray, ice: np.ndarray, ids: np.ndarray, candidates: list[int], radius_px: int,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Overdeepened basins at glacier termini that fill with water as the ice retreats."""
    n = bed.shape[0]
    region = np.zeros(bed.shape, dtype=bool)
    level = np.full(bed.shape, np.nan)
    chosen = []
    yy, xx = np.ogrid[-radius_px:radius_px + 1, -radius_px:radius_px + 1]
    disc = (yy**2 + xx**2) / float(radius_px**2)
    for g in candidates:
        inner = np.zeros(bed.shape, dtype=bool)
        inner[radius_px + 1:n - radius_px - 1, radius_px + 1:n - radius_px - 1] = True
        cells = np.nonzero((ids == g) & ice & inner)  # the lowest ice away from the domain edge
        if cells[0].size == 0:
            continue
        k = int(np.argmin(bed[cells]))
        ty, tx = int(cells[0][k]), int(cells[1][k])
        sl = (slice(ty - radius_px, ty + radius_px + 1), slice(tx - radius_px, tx + radius_px + 1))
        zt = float(bed[ty, tx])
        if zt < 20.0:
            continue
        lz = zt + 4.0
        inside = (disc < 1.0) & (bed[sl] < zt + 30.0) & ~region[sl]
        own = ids[sl]
        inside &= (own == g) | ~ice[sl]  # never flood another glacier
        carved = lz - 25.0 * (1.0 - disc)
        if (inside & ~ice[sl] & (np.minimum(bed[sl], carved) < lz)).sum() < max(8, radius_px**2 // 4):
            continue  # no room for open water in front of this terminus
        bed[sl] = np.where(inside, np.minimum(bed[sl], carved), bed[sl])
        region[sl] |= inside
        level[sl] = np.where(inside, lz, level[sl])
        chosen.append(g)
        if len(chosen) == 2:
            break
    return bed, region, level, chosen


def moraine_band(ice0: np.ndarray, ids: np.ndarray, surf_elev: np.ndarray, ela: np.ndarray, seed: int,
                 debris_glacier: int = 0) -> np.ndarray:
    """Lateral and terminal moraines: a 3-8 px band of land just outside the first year's tongues.

    Only the ablation area (ice surface below the ELA) builds moraines; the band's width wanders with
    its own noise (a generator of its own, so no other random draw of the world moves) and is widest
    around the debris-covered tongue, where the most rock reaches the margin.
    """
    from glacier_stac.synthetic.terrain import spectral_noise

    lower = ice0 & (surf_elev < ela)
    if not lower.any():
        return np.zeros(ice0.shape, dtype=bool)
    rng = np.random.default_rng([seed, 0x6D6F7261])  # "mora"
    u = np.clip(0.5 + 0.3 * spectral_noise(rng, ice0.shape, 2.6), 0.0, 1.0)
    d, (iy, ix) = ndimage.distance_transform_edt(~lower, return_indices=True)
    width = 3.0 + 4.0 * u
    if debris_glacier:
        width = width + np.where(ids[iy, ix] == debris_glacier, 1.0, 0.0)
    return ~ice0 & (d <= width)


def _surfaces(sim_bed: np.ndarray, surf_elev: np.ndarray, ice: np.ndarray, ids: np.ndarray,
              snowline: np.ndarray, debris: np.ndarray, lake: np.ndarray, calving_ice: np.ndarray,
              static: dict[str, np.ndarray], deglaciated: np.ndarray, melange_px: int,
              rng: np.random.Generator) -> np.ndarray:
    from glacier_stac.synthetic.terrain import sea_mask

    s = np.full(ice.shape, Surface.ROCK, dtype=np.uint8)
    s[static["scree"]] = Surface.SCREE
    s[static["vegetation"]] = Surface.VEGETATION
    s[deglaciated & ~static["scree"]] = Surface.ROCK
    sea = sea_mask(sim_bed, blocked=ice)
    s[lake & ~sea] = Surface.LAKE
    s[(sim_bed < 0) & ~ice & ~sea] = Surface.LAKE  # below sea level but cut off: a lagoon
    s[sea] = Surface.SEA
    if calving_ice.any():
        ys, xs = np.nonzero(ndimage.binary_dilation(calving_ice) & sea)
        if ys.size:
            m = 4 * melange_px
            y0, y1 = max(ys.min() - m, 0), min(ys.max() + m + 1, ice.shape[0])
            x0, x1 = max(xs.min() - m, 0), min(xs.max() + m + 1, ice.shape[1])
            sub = (slice(y0, y1), slice(x0, x1))
            d = ndimage.distance_transform_edt(~calving_ice[sub])
            wob = static["wobble"][sub]
            melange = sea[sub] & (d < melange_px * (0.75 + 0.35 * wob))
            # Icebergs: scattered blocks drifting down-fjord, fewer further out.
            far = sea[sub] & ~melange & (d < m)
            p = far * np.exp(-d / (1.5 * melange_px)) * 0.04
            bergs = rng.random(p.shape) < p
            bergs = ndimage.binary_dilation(bergs, iterations=1) & sea[sub]
            s[sub][melange | bergs] = Surface.SEA_ICE
    # Ice-free glacial debris: moraine ridges beside the tongues and the freshly deglaciated forefield.
    # Only land loses its class to it (never water, sea ice or ice), so the truth labels stay the same.
    moraine = (static["moraine"] | deglaciated) & np.isin(s, (Surface.ROCK, Surface.SCREE, Surface.VEGETATION))
    s[moraine & ~ice] = Surface.MORAINE
    s[ice] = Surface.ICE
    s[ice & (surf_elev >= snowline)] = Surface.SNOW
    s[ice & debris] = Surface.DEBRIS  # debris is only below the ELA: it wins over a noisy snowline
    return s


FJORD_TRIES = ((0, 1.0), (0, 1.8), (1, 1.0), (2, 1.0), (1, 1.8), (3, 1.0))  # (candidate, reach up-glacier)


def simulate(config: WorldConfig, fjord_try: int = 0) -> Simulation:
    """Terrain, glaciers and their yearly retreat for a `WorldConfig` (deterministic by seed).

    If the fjord cut under the chosen glacier leaves no ice in the water on the fine grid, the
    whole world is drawn again (same seed) with the fjord under the next candidate (`FJORD_TRIES`).
    """
    from glacier_stac.synthetic.terrain import (
        fine_relief,
        make_terrain,
        slope_deg,
        spectral_noise,
        upsample,
        world_geobox,
    )

    regime = config.physics
    rng = np.random.default_rng(config.seed)
    geobox = world_geobox(config.size_km, config.resolution, config.center_lon, config.center_lat)
    n = geobox.shape[0]
    res = float(config.resolution)
    length = n * res
    terrain = make_terrain(config.size_km, n, rng)
    min_area = 0.0025 * length**2  # 1 km^2 in a 20 km world

    # First year: a regional ice cover, then one glacier cut into a fjord so it calves.
    ela0 = coverage_ela(terrain, regime.coverage)
    st = ice_state(terrain, MassBalance(ela_field(terrain, ela0)))
    gid = glacier_basins(terrain, st, min_area)
    if gid.max() == 0:
        raise RuntimeError(f"no glaciers formed in a {config.size_km} km world (seed {config.seed})")
    from glacier_stac.synthetic.terrain import sea_mask

    # The glaciers flow over the land; then the lower tongue of one of them and the valley below it
    # sink under the sea (relative sea level is a free choice): a fjord. The bed under the tongue
    # drops, the ice geometry stays, so the glacier is guaranteed to end in deep water.
    slope_c = smoothed_slope(terrain.bed, terrain.dx)
    st0 = st
    choice, reach_up = FJORD_TRIES[fjord_try]
    if regime.tidewater:
        drowned, _, trunk = drown_fjord(terrain, st0, gid, 0.1 * terrain.zmax, reach_up=reach_up,
                                        choice=choice, ela=ela_field(terrain, ela0))
        carve = np.minimum(ndimage.gaussian_filter(drowned.bed - terrain.bed, 1.0), 0.0)
    else:  # inland: no fjord, and the coves of the reference frame's coast are valley floor
        trunk = np.zeros(terrain.shape, dtype=bool)
        carve = np.zeros(terrain.shape)
    ice_c = gid > 0
    d, (iy, ix) = ndimage.distance_transform_edt(~ice_c, return_indices=True)
    ids_f = _warped_nearest(gid[iy, ix], n, rng).astype(np.int32)

    bed_land = fine_relief(terrain, n, res, rng)
    bed = bed_land + upsample(carve, n)  # the ground under the ice and the sea: fjord cut in
    if not regime.tidewater:
        bed_land = np.maximum(bed_land, 2.0)
        bed = bed_land.copy()
    margin_noise = 6.0 * spectral_noise(rng, (n, n), 2.8)

    def fine_ice(st: IceState) -> tuple[np.ndarray, np.ndarray]:
        """Signed ice depth and ice-surface elevation on the fine grid (smooth surface, rough bed)."""
        top = upsample(st.surface, n, order=3)
        return np.minimum(top - bed_land, upsample(st.taper, n)) + margin_noise, top

    depth0, top0 = fine_ice(st0)
    min_px = max(10, int(0.0001 * length**2 / res**2))
    ela_f0 = _fine_ela(terrain, ela0, n)
    ice0 = _remove_specks((depth0 > 0) & (ids_f > 0), min_px, bed_land + np.maximum(depth0, 0.0), ela_f0)
    # Drop glaciers that end up too small on the fine grid; renumber 1..N, largest first.
    counts = np.bincount(ids_f[ice0], minlength=int(ids_f.max()) + 1)
    counts[0] = 0
    keep = np.nonzero(counts * res**2 >= min_area)[0]
    keep = keep[np.argsort(-counts[keep], kind="stable")]
    lut = np.zeros(int(ids_f.max()) + 1, dtype=np.int32)
    lut[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    ids_f = lut[ids_f]
    kept = ids_f > 0
    if not kept.all():
        # Ice of a glacier too small to count joins the glacier it touches; if it touches none, it goes.
        _, (iy, ix) = ndimage.distance_transform_edt(~kept, return_indices=True)
        lab, _ = ndimage.label(ice0, structure=np.ones((3, 3), bool))
        ice0 &= np.isin(lab, np.unique(lab[ice0 & kept]))
        ids_f = ids_f[iy, ix]

    # Which glacier calves: the one whose ice meets the sea.
    sea0 = sea_mask(bed, blocked=ice0)
    touching = ice0 & ndimage.binary_dilation(sea0)
    tide_ids = np.unique(ids_f[touching])
    tide_ids = tide_ids[tide_ids > 0]
    if tide_ids.size == 0 and not regime.tidewater:
        tidewater = 0
    elif tide_ids.size == 0:
        if fjord_try + 1 < len(FJORD_TRIES):
            return simulate(config, fjord_try + 1)
        raise RuntimeError(f"no glacier reaches the sea in this world (seed {config.seed}); try another seed")
    else:
        tidewater = int(tide_ids[np.argmax(np.bincount(ids_f[touching])[tide_ids])])

    # Debris: rockfall index from the coarse model, strongest on one land-terminating tongue.
    didx = upsample(debris_index(terrain, st0, ela_field(terrain, ela0)), n)
    didx += 0.08 * spectral_noise(rng, (n, n), 2.4)
    snow_noise = 40.0 * spectral_noise(rng, (n, n), 3.0)
    below = ice0 & (bed_land + np.maximum(depth0, 1.0) < ela_f0 - 10.0)
    nglac = int(ids_f.max())
    thr = np.full(nglac + 1, DEBRIS_THRESHOLD[config.difficulty] * regime.debris_scale)
    abl = np.bincount(ids_f[below], minlength=nglac + 1)
    mean_idx = np.bincount(ids_f[below], weights=didx[below], minlength=nglac + 1) / np.maximum(abl, 1)
    cand = [g for g in range(1, nglac + 1) if g != tidewater and abl[g] * res**2 >= 0.2 * min_area]
    debris_glacier = 0
    if cand:
        debris_glacier = max(cand, key=lambda g: (0.5 + mean_idx[g]) * abl[g])
        vals = didx[below & (ids_f == debris_glacier)]
        thr[debris_glacier] = float(np.quantile(vals, regime.debris_tongue))  # maritime ~80% of its tongue

    # Proglacial lakes at one or two land-terminating termini.
    lake_cand = [g for g in range(1, nglac + 1) if g not in (tidewater, debris_glacier)] + [debris_glacier]
    radius_px = max(4, int(0.02 * length / res))
    bed, lake_region, lake_level, lake_glaciers = _carve_lakes(bed, ice0, ids_f, lake_cand, radius_px)

    # Static ground classes.
    slope_b = slope_deg(bed, res)
    steep = slope_b > 40.0
    scree_px = max(2, int(round(40.0 / res)))
    wobble = spectral_noise(rng, (n, n), 3.0)
    scree = ndimage.binary_dilation(steep, iterations=scree_px) & ~steep & (slope_b > 12.0)
    scree &= wobble > -0.6
    treeline = 0.17 * terrain.zmax + 60.0 * wobble
    vegetation = (bed < treeline) & (slope_b < 32.0) & ~scree & (bed >= 0)
    static = {"scree": scree, "vegetation": vegetation, "wobble": np.clip(wobble, -1, 1)}
    melange_px = max(3, int(0.015 * length / res))

    rise = ELA_RISE * terrain.zmax
    sim = Simulation(terrain, bed, ela0, rise, tidewater, debris_glacier, tuple(lake_glaciers),
                     {}, {}, {}, {}, {}, {})
    corridor = upsample(ndimage.binary_dilation(trunk).astype(np.float64), n) > 0.3
    # Its icefalls: ice along the trunk where the tongue would otherwise be cut off from its basin.
    ice0 |= corridor & (ids_f == tidewater) & ~sea_mask(bed, blocked=ice0 | corridor)
    static["moraine"] = moraine_band(ice0, ids_f, bed_land + np.maximum(depth0, 0.0), ela_f0, config.seed,
                                     debris_glacier)
    ice_prev = None
    for k, year in enumerate(config.years):
        ela_k = ela0 + k * rise
        if k == 0:
            ice, depth, loss = ice0, depth0, 0.0
            ice_top = top0
        else:
            st_k = ice_state(terrain, MassBalance(ela_field(terrain, ela_k)), slope_c)
            depth, ice_top = fine_ice(st_k)
            ela_now = ela_f0 + k * rise
            # Grounded ice in the fjord is at least as thick as the water is deep: it goes last.
            # The tidewater glacier, fed by the largest basin, thins slowest.
            # Its trunk stays connected to the water.
            rank = depth + 2.0 * np.maximum(-bed, 0.0) + np.where(ids_f == tidewater, 40.0, 0.0)
            rank = np.where(corridor & (ids_f == tidewater), rank + 300.0, rank)
            ice, loss = _retreat(ice_prev, rank, config.area_loss_per_year, rng, min_px,
                                 bed_land + np.maximum(depth, 0.0), ela_now)
        ids = np.where(ice, ids_f, 0).astype(np.int32)
        # Over the fjord and lake basins the ice surface sinks with its bed, but grounded ice stays
        # thicker than the water is deep: a calving front stands a few tens of metres above the sea.
        thick = np.where(ice, np.maximum(depth, 1.0), 0.0)
        thick = np.where(ice & (bed < 0), np.maximum(thick, 1.12 * -bed + 15.0), thick)
        snowline = ela_f0 + k * rise + snow_noise
        debris = didx > thr[ids] * (1.0 - 0.04 * k)  # debris spreads up-glacier as ice thins
        debris &= bed + thick < ela_f0 + k * rise - 10.0  # rock melts out below the ELA only
        lake = lake_region & ~ice & (bed < lake_level)
        sea_now = sea_mask(bed, blocked=ice)
        calving_ice = ice & np.isin(ids, np.unique(ids[ice & ndimage.binary_dilation(sea_now)]))
        degl = ice0 & ~ice
        # Firn by the smooth ice surface (sunk with the fjord); icefalls kept by hand sit on their bed.
        snow_elev = np.where(depth > 0, ice_top + (bed - bed_land), bed)
        s = _surfaces(bed, snow_elev, ice, ids, snowline, debris, lake, calving_ice, static, degl,
                      melange_px, rng)
        sim.ice[year], sim.ids[year], sim.thickness[year] = ice, ids, thick.astype(np.float32)
        sim.surface[year], sim.ela[year], sim.area_loss[year] = s, ela_f0 + k * rise, loss
        ice_prev = ice
    if regime.sea_ice > 0:
        _drift_sea_ice(sim, regime.sea_ice, config.seed)
    if (regime.base_m, regime.vertical_scale) != (0.0, 1.0):
        _to_regime_heights(sim, regime)
    return sim


def _drift_sea_ice(sim: Simulation, cover: float, seed: int) -> None:
    """Drifting floes over `cover` of each year's open sea (a generator of its own: no other draw moves)."""
    from glacier_stac.synthetic.terrain import spectral_noise

    for year, s in sim.surface.items():
        sea = s == Surface.SEA
        if not sea.any():
            continue
        rng = np.random.default_rng([seed, year, 0x73656169])  # "seai"
        f = spectral_noise(rng, s.shape, 2.2)
        s[sea & (f > np.quantile(f[sea], 1.0 - cover))] = Surface.SEA_ICE


def _to_regime_heights(sim: Simulation, regime) -> None:  # noqa: ANN001 - config.Regime
    """Map the reference frame's heights into the regime's range: bed, ice thickness and ELA alike."""
    b = regime.vertical_scale
    sim.bed = np.where(sim.bed < 0, b * sim.bed, regime.height(sim.bed))  # the sea floor stays below sea
    for y in sim.thickness:
        sim.thickness[y] = (sim.thickness[y] * b).astype(np.float32)
        sim.ela[y] = regime.height(sim.ela[y])
    sim.ela0 = float(regime.height(sim.ela0))
    sim.ela_rise = sim.ela_rise * b
