"""Stage `plot`: the paper's figures as PNGs plus DVC-native plot data (plots/data/*.csv) for `dvc plots show/diff`.

    python stages/plot.py
Figures (plots/png/): acc_vs_size-<model>.png (Figs. 2-3), diagonal-<model>.png (train x test level),
levels.png (memory-level distribution per model), cross_model.png (level under model A vs model B).
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from memqa import paths
from memqa.config import load_params
from memqa.options import params_option
from memqa.plots import run_plot


@click.command("plot")
@params_option
@click.option("--out", "out_dir", default=str(paths.PLOTS), show_default=True, type=click.Path(path_type=Path))
def main(params_file: str, out_dir: Path) -> None:
    """Draw accuracy vs size, the train x test level heat map, level distributions and cross-model agreement."""
    agreement = run_plot(load_params(params_file), out_dir, paths.GRID, paths.PROBE_DATA)
    click.echo(f"plot: figures in {out_dir}/; cross-model kappa {json.dumps(agreement)}")


if __name__ == "__main__":
    main()
