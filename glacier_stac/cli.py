"""The `glacier-stac` command: a thin shell over the library's entry points."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from glacier_stac import __version__

app = typer.Typer(help="Annual glacier outlines from free multi-sensor satellite data.", no_args_is_help=True)
synthetic_app = typer.Typer(help="Generate, render and inspect synthetic glacier worlds.", no_args_is_help=True)
catalog_app = typer.Typer(help="Serve and search STAC catalogs.", no_args_is_help=True)
app.add_typer(synthetic_app, name="synthetic")
app.add_typer(catalog_app, name="catalog")

log = logging.getLogger("glacier_stac")

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
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Dependencies are chatty at INFO; keep them at WARNING unless -vv.
    for name in ("distributed", "rasterio", "urllib3", "httpx", "matplotlib"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


def fail(message: str) -> None:
    """Print a clear error and exit non-zero (no traceback for bad input)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)



@catalog_app.command("serve")
def catalog_serve(
    world_dir: Path = typer.Argument(..., help="A generated world directory (with world.json)."),
    port: int = typer.Option(0, "--port", "-p", min=0, max=65535, help="Port on 127.0.0.1; 0 picks a free one."),
) -> None:
    """Serve a generated world as a STAC API on 127.0.0.1 with `rustac serve` until Ctrl-C."""
    import signal
    import sys

    from glacier_stac import stac_server

    def _terminate(signum: int, frame: object) -> None:  # SIGTERM stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        with stac_server.serve(world_dir, port=port) as url:
            typer.echo(url)
            sys.stdout.flush()
            conf = stac_server.conformance(url)
            typer.echo(f"serving {world_dir} ({conf.summary()}); Ctrl-C stops", err=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:  # at any moment, even while starting: the server is already stopped here
        typer.echo("stopped", err=True)
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as e:
        fail(str(e))

if __name__ == "__main__":  # pragma: no cover
    app()
