"""Stage `summarize`: the grid with intervals (metrics/grid.csv, metrics/summary.json) and the paper's claims
tested (metrics/verdicts.json).

    python stages/summarize.py
"""
from __future__ import annotations

from pathlib import Path

import click

from memqa import grid, paths
from memqa.config import load_params
from memqa.environment import with_versions
from memqa.io import csv_text, json_text, write_all
from memqa.options import params_option
from memqa.study import load_studies
from memqa.verdicts import all_verdicts


@click.command("summarize")
@params_option
@click.option("--metrics-root", default=str(paths.METRICS), show_default=True, type=click.Path(path_type=Path))
def main(params_file: str, metrics_root: Path) -> None:
    """Read the evaluated cells of the current params (models x split.levels x sizes x seeds, and each model's
    untrained base) and write metrics/grid.csv (mean and 95% bootstrap interval over seeds and test facts of
    every level accuracy, the headline and micro accuracy), metrics/summary.json (headlines) and
    metrics/verdicts.json (each published claim: statistic, effect, interval, verdict).

    Metrics of cells no longer in the params are not read; a cell in the params without metrics is an error.
    """
    params = load_params(params_file)
    studies = load_studies(params, metrics_root, paths.EVAL_DATA)
    rows = grid.grid_rows(studies, params.report)
    verdicts = all_verdicts(studies, params.report)
    write_all({metrics_root / paths.GRID.name: csv_text(rows, grid.columns(params.probe.n_levels)),
               metrics_root / paths.SUMMARY.name: json_text(with_versions(grid.summary(rows))),
               metrics_root / paths.VERDICTS.name: json_text(verdicts)})
    click.echo(f"summarize: {len(rows)} rows -> {metrics_root / paths.GRID.name}; "
               f"{sum(v['verdict'] != 'inconclusive' for v in verdicts)} of {len(verdicts)} verdicts decided")


if __name__ == "__main__":
    main()
