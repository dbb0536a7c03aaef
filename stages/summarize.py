"""Stage `summarize`: gather the grid's metrics into one table (metrics/summary.json, metrics/grid.csv).

    python stages/summarize.py
"""
from __future__ import annotations

from pathlib import Path

import click

from memqa import grid, paths
from memqa.config import load_params, section
from memqa.io import write_csv, write_json
from memqa.memory import n_levels
from memqa.options import params_option


@click.command("summarize")
@params_option
@click.option("--metrics-root", default=str(paths.METRICS), show_default=True, type=click.Path(path_type=Path))
def main(params_file: str, metrics_root: Path) -> None:
    """Collect the evaluated cells of the current params (models x split.levels x sizes x seeds, and each
    model's untrained base) into metrics/grid.csv (all levels) and metrics/summary.json (headlines).

    Metrics of cells no longer in the params are not read; a cell in the params without metrics is an error.
    """
    params = load_params(params_file)
    levels = n_levels(section(params, "probe")["level_bounds"])
    cells = grid.current_cells(list(section(params, "models")), section(params, "split"))
    rows = grid.grid_rows(metrics_root, cells, levels)
    write_csv(metrics_root / "grid.csv", rows, grid.columns(levels))
    write_json(metrics_root / "summary.json", grid.summary(rows))
    click.echo(f"summarize: {len(rows)} rows -> {metrics_root}/grid.csv, {metrics_root}/summary.json")


if __name__ == "__main__":
    main()
