"""Stage `report`: REPORT.md, what was run, the grid, the level distributions, the figures, a side-by-side
with the published numbers, and which of the paper's findings this run reproduces.

    python stages/report.py
"""
from __future__ import annotations

from pathlib import Path

import click

from memqa import paths
from memqa.config import load_params, read_reference
from memqa.grid import read_grid
from memqa.io import atomic_write_text, read_json
from memqa.options import params_option
from memqa.report import build_report


@click.command("report")
@params_option
@click.option("--out", "out_path", default=str(paths.REPORT), show_default=True, type=click.Path(path_type=Path))
def main(params_file: str, out_path: Path) -> None:
    """Write REPORT.md: verdict table, run description, level distributions, grid, figures, published side-by-side."""
    params = load_params(params_file)
    reference = read_reference(params.report.reference)  # a bad report.reference is named before anything is read
    text = build_report(params, read_grid(paths.GRID), read_json(paths.VERDICTS), paths.METRICS, paths.PLOTS,
                        reference, paths.BENCHMARK_RESULTS)
    atomic_write_text(out_path, text)
    click.echo(f"report: {out_path} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    main()
