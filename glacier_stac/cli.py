"""The `glacier-stac` command: a thin shell over the library's entry points."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import typer

from glacier_stac import __version__
from glacier_stac.cli_inventory import inventory_app
from glacier_stac.redact import install_log_redaction, redact
from glacier_stac.synthetic.config import REGIMES

app = typer.Typer(help="Annual glacier outlines from free multi-sensor satellite data.", no_args_is_help=True)
synthetic_app = typer.Typer(help="Generate, render and inspect synthetic glacier worlds.", no_args_is_help=True)
catalog_app = typer.Typer(help="Serve and search STAC catalogs.", no_args_is_help=True)
app.add_typer(synthetic_app, name="synthetic")
app.add_typer(catalog_app, name="catalog")
app.add_typer(inventory_app, name="inventory")

log = logging.getLogger("glacier_stac")

REGIME_CHOICES = " | ".join(REGIMES)  # the --regime values, from the regimes themselves
DEFAULT_WORLD_DIR = Path.home() / ".cache" / "glacier_stac" / "worlds"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"glacier-stac {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More logging (-v info, -vv debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """glacier-stac: STAC -> Dask datacubes -> PyTorch -> Zarr -> glacier outlines."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else logging.INFO)
    install_log_redaction()  # before any library logs: GDAL and urllib3 print signed URLs on retries
    # distributed configures its own loggers when first imported (lazily, later): tell it now
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "info" if verbose >= 2 else "warning")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Dependencies are chatty at INFO; keep them at WARNING unless -vv.
    for name in ("distributed", "rasterio", "urllib3", "httpx", "matplotlib"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def fail(message: str) -> None:
    """Print a clear error and exit non-zero (no traceback for bad input, no secret from a URL)."""
    typer.secho(f"error: {redact(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


# ------------------------------------------------------------------------------ checks before work
# Each runs before anything is generated, trained or written, so a bad argument costs nothing.


def number(lo: float | None = None, hi: float | None = None, *, above: bool = False
           ) -> Callable[[typer.Context, typer.CallbackParam, float | None], float | None]:
    """A typer callback refusing NaN, infinities and values outside [lo, hi] (or (lo, hi] when `above`),
    naming the option (click's own ranges let NaN through)."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: float | None) -> float | None:
        if value is None:
            return value
        low_ok = lo is None or (value > lo if above else value >= lo)
        if not (math.isfinite(value) and low_ok and (hi is None or value <= hi)):
            lo_txt = "" if lo is None else f"{'>' if above else '>='} {lo:g}"
            hi_txt = "" if hi is None else f"<= {hi:g}"
            raise typer.BadParameter(f"{value} is not a finite number {' and '.join(t for t in (lo_txt, hi_txt) if t)}")
        return value

    return check


def _writable_ancestor(path: Path, option: str) -> None:
    """The nearest existing folder above `path` is a folder we may write in (probed; nothing is left)."""
    anc = path.absolute()
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise ValueError(f"{option} {path}: {anc} is a file, not a directory")
    try:
        tempfile.TemporaryDirectory(dir=anc, prefix=".glacier-stac-probe-").cleanup()
    except OSError as e:
        raise ValueError(f"{option} {path}: cannot write in {anc} ({e.strerror or e})") from None


def check_out_file(path: Path, option: str, parent_must_exist: bool = False) -> Path:
    """A file path we will be able to write, checked before the work that produces it."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a file path")
    if parent_must_exist and not path.absolute().parent.is_dir():
        what = "is a file" if path.absolute().parent.exists() else "does not exist"
        raise ValueError(f"{option} {path}: directory {path.absolute().parent} {what}")
    _writable_ancestor(path.parent, option)
    return path


def check_out_dir(path: Path, option: str) -> Path:
    """A directory we will be able to create or write into, checked before the work that fills it."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file, not a directory")
    _writable_ancestor(path, option)
    return path


# ------------------------------------------------------------------------------ synthetic worlds


def _parse_years(text: str) -> tuple[int, ...]:
    """'2019-2023' or '2019,2021,2023' -> years; reversed, empty, future or pre-satellite years are errors
    (the one rule of `catalog.check_years`, shared with search and the synthetic worlds)."""
    from glacier_stac.catalog import check_years

    text = text.strip()
    try:
        if "-" in text.lstrip("-"):
            a, b = (int(v) for v in text.split("-", 1))
            if b < a:
                raise ValueError(f"--years range {text!r} is reversed; write it as {b}-{a}")
            if b - a > 200:
                raise ValueError(f"--years range {text!r} spans {b - a + 1} years")
            years = tuple(range(a, b + 1))
        else:
            years = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        if str(e).startswith("--years"):
            raise
        raise ValueError(f"cannot read --years {text!r}; write e.g. 2019-2023 or 2019,2021") from None
    if not years:
        raise ValueError("--years is empty; write e.g. 2019-2023")
    try:
        return tuple(check_years(years))
    except ValueError as e:
        raise ValueError(f"--years {text!r}: {e}") from None


@synthetic_app.command("generate")
def synthetic_generate(
    out: Path | None = typer.Option(None, "--out", "-o", help="World directory (default: a cache dir per config)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same seed gives the same bytes."),
    size_km: float = typer.Option(20.0, "--size-km", callback=number(0, 60, above=True),
                                  help="Side of the square world, km (at most 60)."),
    years: str = typer.Option("2019-2023", "--years", help="Years, e.g. 2019-2023 or 2019,2021."),
    difficulty: str = typer.Option("hard", "--difficulty", help="easy | normal | hard (clouds, seasonal snow)."),
    force: bool = typer.Option(False, "--force", help="Rewrite even if the directory holds this world already."),
    quicklooks: bool = typer.Option(False, "--quicklook", help="Also write PNG quicklooks."),
    regime: str = typer.Option("maritime", "--regime",
                               help=f"{REGIME_CHOICES}."),
) -> None:
    """Generate a synthetic glacier world: COGs + STAC + truth (reused if already complete)."""
    from glacier_stac.synthetic.world import WorldConfig
    from glacier_stac.synthetic.writer import generate

    try:
        config = WorldConfig(seed=seed, size_km=size_km, years=_parse_years(years), difficulty=difficulty,
                             regime=regime)
        ys = config.years
        tag = "" if regime == "maritime" else f"-{regime}"
        out = check_out_dir(out or DEFAULT_WORLD_DIR / f"seed{seed}-{size_km:g}km-{ys[0]}-{ys[-1]}-{difficulty}{tag}",
                            "--out")
        path = generate(config, out, force=force)
        if quicklooks:
            from glacier_stac.synthetic.quicklook import quicklook

            quicklook(path)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        fail(str(e))
    typer.echo(str(path))


@synthetic_app.command("render")
def synthetic_render(
    dem: Path = typer.Option(..., "--dem", help="DEM GeoTIFF (any CRS)."),
    outlines: Path = typer.Option(..., "--outlines", help="Glacier outlines (any vector file geopandas reads)."),
    out: Path = typer.Option(..., "--out", "-o", help="World directory to write."),
    years: str = typer.Option("2019-2023", "--years", help="Years, e.g. 2019-2023 or 2019,2021."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same seed gives the same bytes."),
    difficulty: str = typer.Option("hard", "--difficulty", help="easy | normal | hard (clouds, seasonal snow)."),
    regime: str = typer.Option("maritime", "--regime",
                               help="Climate the sensors see (thermal lapse rate, season, SAR pols): "
                                    f"{REGIME_CHOICES}."),
    class_column: str = typer.Option(None, "--class-column",
                                     help="Outlines column whose 'rock glacier' values are drawn as rock glaciers."),
) -> None:
    """Render the sensors over your own DEM and glacier outlines (glaciers retreat year by year)."""
    from glacier_stac.synthetic.user import from_user
    from glacier_stac.synthetic.writer import write_world

    try:
        ys = _parse_years(years)
        check_out_dir(out, "--out")
        world = from_user(dem, outlines, ys, seed=seed, difficulty=difficulty, regime=regime,
                          class_column=class_column)
        path = write_world(world, out, source=f"user: dem={dem} outlines={outlines}")
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    typer.echo(str(path))


@synthetic_app.command("quicklook")
def synthetic_quicklook(world_dir: Path = typer.Argument(..., help="A world directory (with world.json).")) -> None:
    """Write PNG quicklooks (S2 false colour, S1, Landsat thermal, DEM hillshade) with truth outlines."""
    from glacier_stac.synthetic.quicklook import quicklook

    try:
        paths = quicklook(world_dir)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    for p in paths:
        typer.echo(str(p))



@catalog_app.command("serve")
def catalog_serve(
    world_dir: Path = typer.Argument(..., help="A generated world directory (with world.json)."),
    port: int = typer.Option(0, "--port", "-p", min=0, max=65535, help="Port on 127.0.0.1; 0 picks a free one."),
) -> None:
    """Serve a generated world as a STAC API on 127.0.0.1 with `rustac serve` until Ctrl-C."""
    import signal
    import sys
    import time

    from glacier_stac import stac_server

    def _terminate(signum: int, frame: object) -> None:  # SIGTERM stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    if world_dir.exists() and not world_dir.is_dir():
        fail(f"{world_dir} is a file; give a world directory (with world.json)")
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with stac_server.serve(world_dir, port=port) as url:
            typer.echo(url)
            sys.stdout.flush()
            conf = stac_server.conformance(url)
            typer.echo(f"serving {world_dir} ({conf.summary()}); Ctrl-C stops", err=True)
            while True:  # not signal.pause(): a signal landing just before it would leave it waiting forever
                time.sleep(0.5)
    except KeyboardInterrupt:  # at any moment, even while starting: the server is already stopped here
        typer.echo("stopped", err=True)
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as e:
        fail(str(e))



# ------------------------------------------------------------------------------ search, tiles, demo


# a bbox west of Greenwich starts with '-': read it as the AOI, not as an unknown option
@catalog_app.command("search", context_settings={"ignore_unknown_options": True})
def catalog_search(
    aoi: str = typer.Argument(..., help="bbox 'minx,miny,maxx,maxy' (lon/lat), GeoJSON or any vector file."),
    years: str = typer.Option(..., "--years", help="Years, e.g. 2019-2023 or 2021."),
    url: str = typer.Option("https://planetarycomputer.microsoft.com/api/stac/v1", "--url", help="STAC API URL."),
    sensors: str | None = typer.Option(None, "--sensors", help="Comma-separated, e.g. sentinel-2,copdem."),
    max_cloud: float = typer.Option(80.0, "--max-cloud", callback=number(0, 100),
                                    help="Max eo:cloud_cover (percent) for optical/thermal items."),
    ids: str | None = typer.Option(None, "--ids", help="Glacier ids to select from an outline file (comma-separated)."),
) -> None:
    """Search a STAC API per sensor and year over an AOI; print item counts and gaps."""
    from glacier_stac import catalog

    if aoi.startswith("--"):  # an option the command does not have, let through as the AOI above
        fail(f"no such option: {aoi.split('=')[0]}")
    try:
        area = catalog.load_aoi(aoi, ids=[i.strip() for i in ids.split(",") if i.strip()] if ids else None)
        found = catalog.search(area, _parse_years(years), sensors=sensors, catalog=url, max_cloud=max_cloud,
                               missing="record")
    except (ValueError, FileNotFoundError, PermissionError, catalog.CatalogError, TypeError) as e:
        fail(str(e))
    for row in found.summary():
        typer.echo(f"{row['sensor']:<12} {row['year'] or 'static':>6} {row['items']:>4} items")
    for sensor, year in found.gaps:
        typer.secho(f"gap: no {sensor} items for {year} over {found.aoi}", fg=typer.colors.YELLOW, err=True)


@app.command("tiles")
def tiles(
    outlines: Path = typer.Argument(..., help="Glacier outlines, e.g. an RGI 7.0 region file."),
    buffer_m: float = typer.Option(500.0, "--buffer-m", callback=number(0, 100_000),
                                   help="Buffer around each glacier, metres."),
    out: Path | None = typer.Option(None, "--out", help="Write the plan as CSV (default: print it)."),
) -> None:
    """Plan the global-grid tiles that intersect the buffered glaciers, with pixel counts."""
    import geopandas as gpd

    from glacier_stac import grid

    try:
        if out is not None:
            check_out_file(out, "--out", parent_must_exist=True)
    except ValueError as e:
        fail(str(e))
    if not outlines.is_file():
        fail(f"cannot plan tiles for {outlines}: " + ("it is a directory" if outlines.is_dir() else "no such file"))
    try:
        frame = gpd.read_file(outlines)
    except Exception as e:  # noqa: BLE001 - any driver error means the same to the user
        fail(f"cannot plan tiles for {outlines}: not a vector file GDAL reads ({e})")
    try:
        plan = grid.plan_tiles(frame, buffer_m=buffer_m)
    except (ValueError, TypeError) as e:  # bad geometry or CRS: the message names the outline
        fail(f"cannot plan tiles for {outlines}: {e}")
    if out:
        plan.to_csv(out, index=False)
        typer.echo(f"{len(plan)} tiles -> {out}")
    else:
        typer.echo(plan.to_string(index=False))


@app.command("demo")
def demo(
    out: Path = typer.Option(DEFAULT_WORLD_DIR / "demo", "--out", "-o", help="Where the demo world is cached."),
    seed: int = typer.Option(0, "--seed", min=0, help="World seed."),
    size_km: float = typer.Option(20.0, "--size-km", callback=number(0, 60, above=True),
                                  help="Side of the world, km (at most 60)."),
    years: str = typer.Option("2019-2023", "--years", help="Years of the world."),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Model checkpoint (default: the shipped one)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Dask worker processes."),
    results: Path = typer.Option(Path("glacier-stac-demo"), "--results",
                                 help="Where the predictions (Zarr), inventory (GeoParquet) and plots go."),
) -> None:
    """Generate the default world, serve it as a STAC API, and run the pipeline over it: store, outlines, inventory."""
    from glacier_stac import demo as demo_mod
    from glacier_stac.synthetic.world import WorldConfig

    try:
        config = WorldConfig(seed=seed, size_km=size_km, years=_parse_years(years))
        if checkpoint is not None and not checkpoint.is_file():
            raise ValueError(f"--checkpoint {checkpoint} is not a file")
        check_out_dir(out, "--out")
        check_out_dir(results, "--results")
        demo_mod.run(out / f"seed{seed}-{size_km:g}km-{config.years[0]}-{config.years[-1]}", config,
                     checkpoint or demo_mod.DEFAULT_CHECKPOINT, workers=workers, results=results)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))


# ------------------------------------------------------------------------------ runs


def _load_run_config(config: Path):
    from glacier_stac import pipeline

    try:
        return pipeline.load_config(config)
    except pipeline.ConfigError as e:
        fail(str(e))


@app.command("run")
def run_cmd(
    config: Path = typer.Argument(..., help="Run configuration (TOML): AOI or reference outlines, years, store..."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="An existing Dask scheduler (tcp://host:8786)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (tiles, pixels, scenes, bytes, time)."),
) -> None:
    """Map every tile of the AOI (or around every reference glacier) for the configured years; resumable."""
    import json

    from glacier_stac import pipeline, store

    cfg = _load_run_config(config)
    try:
        if dry_run:
            typer.echo(json.dumps(pipeline.dry_run(cfg), indent=1))
            return
        rep = pipeline.run(cfg, scheduler=scheduler)
    except (ValueError, FileNotFoundError, store.StoreError) as e:
        fail(str(e))
    _print_report(rep)
    if rep.counts()["failed"]:
        raise typer.Exit(1)


@app.command("update")
def update_cmd(
    config: Path = typer.Argument(..., help="The run configuration of the inventory to update."),
    year: int = typer.Option(..., "--year", help="The year to add (earlier years are never recomputed)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="An existing Dask scheduler (tcp://host:8786)."),
) -> None:
    """The annual update: add one year to the store, the outlines, the inventory and the change table."""
    from dataclasses import replace

    from glacier_stac import catalog, pipeline, store

    cfg = _load_run_config(config)
    try:
        (year,) = catalog.check_years([year])
        if not cfg.inventory:
            raise ValueError(f"{config} has no [inventory] url: an update needs an inventory to add year {year} to")
        rep = pipeline.run(replace(cfg, years=(year,)), scheduler=scheduler)
    except (ValueError, FileNotFoundError, store.StoreError) as e:
        fail(str(e))
    _print_report(rep)
    if rep.counts()["failed"]:
        raise typer.Exit(1)


def _print_report(rep) -> None:
    c = rep.counts()
    typer.echo(f"tiles: {c['done']} done, {c['skipped']} already done, {c['empty']} without scenes, "
               f"{c['failed']} failed in {rep.wall_s:.1f} s")
    for t in rep.tiles:
        if t.status == "failed":
            typer.echo(f"  failed {t.tile} {t.year}: {t.reason}")
    for k, v in rep.inventory.items():
        typer.echo(f"inventory {k}: {v}")


# ------------------------------------------------------------------------------ training


def _seeds(text: str, option: str) -> list[int]:
    try:
        seeds = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"cannot read {option} {text!r}; write e.g. 1001,1002") from None
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"{option} {text!r}: give one or more seeds >= 0, e.g. 1001,1002")
    return seeds


def _check_model(model: str, n_features: int, patch: int, base: int, size_km: float) -> dict:
    """The model's keyword arguments, once name, width and patch size are known to suit it."""
    import inspect

    from glacier_stac.labels import Label
    from glacier_stac.models import MODELS, get_model

    if model not in MODELS:
        raise ValueError(f"--model {model!r} is unknown; choose from {sorted(MODELS)}")
    # the width option applies to models that have one (cnn5 has a fixed width per layer)
    kwargs = {"base": base} if "base" in inspect.signature(MODELS[model]).parameters else {}
    divisor = getattr(get_model(model, n_features, len(Label), **kwargs), "divisor", 1)
    if patch % divisor:
        raise ValueError(f"--patch {patch} px is not a multiple of {model}'s divisor {divisor}")
    if patch > size_km * 100:
        raise ValueError(f"--patch {patch} px is larger than a {size_km:g} km world at 10 m")
    return kwargs


def _check_device(device: str | None) -> None:
    import torch

    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device; give cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: no CUDA device here")


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (.pt); a model card goes beside it."),
    model: str = typer.Option("unet", "--model", help="cnn5 | unet | glavitu."),
    features: str = typer.Option("all", "--features", help="all | optical | comma-separated feature names."),
    seeds: str = typer.Option("1001,1002,1004", "--seeds", help="Synthetic training worlds (seeds)."),
    val_seeds: str = typer.Option("1003", "--val-seeds", help="Synthetic validation worlds (other regions)."),
    worlds: list[Path] = typer.Option([], "--world", help="Extra training world directories."),
    size_km: float = typer.Option(12.0, "--size-km", callback=number(0, 60, above=True),
                                  help="Side of each generated world, km."),
    years: str = typer.Option("2021,2023", "--years", help="Years of each generated world."),
    epochs: int = typer.Option(10, "--epochs", min=1),
    steps: int = typer.Option(40, "--steps", min=1, help="Batches per epoch."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    patch: int = typer.Option(128, "--patch", min=8, help="Training patch side, px."),
    lr: float = typer.Option(2e-3, "--lr", callback=number(0, 10, above=True)),
    seed: int = typer.Option(0, "--seed", min=0, help="Training seed (sampling, initialisation)."),
    base: int = typer.Option(16, "--base", min=1, help="Channels of the first level (model width)."),
    device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda when present)."),
) -> None:
    """Train a model on synthetic worlds (validated on other worlds) and write a checkpoint + model card."""
    import sys

    from glacier_stac import cube, train
    from glacier_stac.synthetic.world import WorldConfig
    from glacier_stac.synthetic.writer import generate
    from glacier_stac.testing.regions import world_regions

    try:
        feats = list(cube.FEATURES) if features == "all" else (
            list(train.OPTICAL_FEATURES) if features == "optical" else [f.strip() for f in features.split(",")])
        unknown = [f for f in feats if f not in cube.FEATURES]
        if unknown:
            raise ValueError(f"unknown features {unknown}; the cube has {list(cube.FEATURES)}")
        ys = _parse_years(years)
        train_seeds, v_seeds = _seeds(seeds, "--seeds"), _seeds(val_seeds, "--val-seeds")
        if set(train_seeds) & set(v_seeds):
            raise ValueError(f"validation seeds {v_seeds} overlap training seeds {train_seeds}")
        # every cheap check before the worlds are generated and the model trained (minutes, hundreds of MB)
        kwargs = _check_model(model, len(feats), patch, base, size_km)
        check_out_file(out, "--out")
        _check_device(device)
        for w in worlds:
            if not (w / "world.json").is_file():
                raise ValueError(f"--world {w} is not a world directory (no world.json)")

        def world(s: int) -> Path:
            cfg = WorldConfig(seed=s, size_km=size_km, years=ys)
            return generate(cfg, DEFAULT_WORLD_DIR / f"train-seed{s}-{size_km:g}km-{'-'.join(map(str, ys))}")

        tr = [r for s in train_seeds for r in world_regions(world(s))]
        tr += [r for w in worlds for r in world_regions(w)]
        va = [r for s in v_seeds for r in world_regions(world(s))]
        # optical-only models may only predict where the optics saw the ground
        required = ["B03", "B11"] if set(feats) <= set(train.OPTICAL_FEATURES) else ["elevation"]
        ckpt, _ = train.train(
            tr, va, model=model, features=feats, required=required, epochs=epochs, steps_per_epoch=steps,
            batch_size=batch_size, patch=patch, lr=lr, seed=seed, model_kwargs=kwargs, device=device,
            data=f"synthetic worlds seeds {train_seeds} (validation {v_seeds}), {size_km:g} km, years {list(ys)}",
            command="glacier-stac " + " ".join(sys.argv[1:]))
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    from glacier_stac.models.checkpoint import save

    path = save(ckpt, out)
    card = train.write_model_card(ckpt, path.with_suffix(".md"))
    val = ckpt.metrics["validation"]
    typer.echo(f"{path} (+ {card.name}): validation IoU {val['iou_overall']:.3f}, debris {val['iou_debris']:.3f}")


if __name__ == "__main__":  # pragma: no cover
    app()
