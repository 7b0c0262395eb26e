"""The capacity estimate in benchmarks/README.md is `pipeline.estimate`'s output, not hand arithmetic: the
run table, the wall time and the dollars there must be what the function gives today from the recorded
per-tile figures (`measured_per_tile`) and `CostAssumptions`, so a changed assumption or a new scaling
result cannot leave the README behind (issue 12)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from glacier_stac import pipeline

README = Path(__file__).resolve().parents[1] / "benchmarks" / "README.md"
BYTES_PER_TILE = 398e6  # the README's "bytes read" row
# the run table's columns: tiles and the remote-read factor
CASES = {"central": (20_186, 2.0), "low": (14_197, 2.0), "high": (32_577, 6.0)}


def _section() -> str:
    text = README.read_text()
    start = text.index("## Capacity estimate")
    end = text.index("\n## ", start + 1) if "\n## " in text[start + 1:] else len(text)
    return text[start:end]


def _row(section: str, label: str) -> list[str]:
    """The central/low/high cells of the table row whose first cell is `label`."""
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == label:
            return cells[1:]
    raise AssertionError(f"no row {label!r} in the capacity estimate")


def _number(cell: str) -> float:
    return float(re.sub(r"[^0-9.]", "", cell.split()[0].replace("**", "")))


def _minutes(cell: str) -> float:
    cell = cell.replace("**", "")
    h = re.search(r"(\d+) h", cell)
    m = re.search(r"(\d+) min", cell)
    return 60 * (int(h.group(1)) if h else 0) + (int(m.group(1)) if m else 0)


@pytest.fixture(scope="module")
def estimates() -> dict[str, dict]:
    measured = pipeline.measured_per_tile(pipeline.DEFAULT_CHECKPOINT)
    return {k: pipeline.estimate(t, measured, t * BYTES_PER_TILE,
                                 replace(pipeline.CostAssumptions(), remote_read_factor=f))
            for k, (t, f) in CASES.items()}


def test_run_table_is_the_estimate(estimates: dict[str, dict]) -> None:
    sec = _section()
    cols = list(CASES)
    for label, key, ndigits in (("CPU reading (+ writes)", "reading_core_hours", 0), ("GPU", "gpu_hours", 2),
                                ("CPU-only instead (inference on CPUs)", "cpu_only_core_hours", 0)):
        for col, cell in zip(cols, _row(sec, label), strict=True):
            assert _number(cell) == round(estimates[col][key], ndigits), (label, col, cell)
    for col, cell in zip(cols, _row(sec, "tiles"), strict=True):
        assert int(_number(cell.replace(",", ""))) == CASES[col][0]


def test_wall_time_and_dollars_are_the_estimate(estimates: dict[str, dict]) -> None:
    sec = _section()
    wall = _row(sec, "run: tiles / slowest rate × 1.3 (waves' tails, retries) + 10 min (nodes, image pulls)")
    assert _minutes(wall[0]) == round(60 * estimates["central"]["wall_hours_reference_cluster"])
    assert _minutes(wall[1]) == round(60 * estimates["high"]["wall_hours_reference_cluster"])
    usd = _row(sec, "compute (wall × cluster)")
    for col, cell in zip(CASES, usd, strict=True):
        assert _number(cell) == round(estimates[col]["cost_usd_reference_cluster"]), (col, cell)
    summary = sec[sec.index("**Summary"):].split("\n\n")[0]
    assert f"${round(estimates['central']['cost_usd_reference_cluster'])} " in summary
    assert f"{round(estimates['central']['gpu_hours'], 1)} GPU-hours" in summary
