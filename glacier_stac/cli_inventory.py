"""`glacier-stac inventory ...`: read-only views of a glacier inventory (a thin shell over `inventory`)."""

from __future__ import annotations

from pathlib import Path

import typer

inventory_app = typer.Typer(help="Summarise and plot a glacier change inventory (GeoParquet).", no_args_is_help=True)


def _read(path: Path):
    from glacier_stac import inventory

    try:
        return inventory.read(path)
    except (FileNotFoundError, inventory.InventoryError) as e:
        typer.secho(f"error: {e if not isinstance(e, FileNotFoundError) else f'no inventory at {path}'}",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None


@inventory_app.command("summary")
def summary(path: Path = typer.Argument(..., help="Inventory GeoParquet written by the annual update.")) -> None:
    """Print one row per region: glaciers, area in the first and last year, rate of change ± uncertainty."""
    from glacier_stac import inventory

    table = inventory.summary(_read(path))
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


@inventory_app.command("plot")
def plot(
    path: Path = typer.Argument(..., help="Inventory GeoParquet written by the annual update."),
    out: Path = typer.Option(Path("."), "--out", "-o", help="Directory for the PNGs."),
) -> None:
    """Write a change map (first and last year's outlines, coloured by %/yr) and an area-by-year chart."""
    from glacier_stac import inventory

    inv = _read(path)
    if out.exists() and not out.is_dir():
        typer.secho(f"error: --out {out} is a file, not a directory", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    for png in inventory.plot(inv, out):
        typer.echo(str(png))
