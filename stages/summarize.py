"""Stage `summarize`: gather the grid's metrics into one table (metrics/summary.json, metrics/grid.csv).

    memqa summarize
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import click

from stages.params import atomic_write_text, load_params, params_option, section, write_json
from stages.split import cell_name

CELL = re.compile(r"^L(?P<level>\d+)-n(?P<size>\w+)-s(?P<seed>\d+)$")
COLUMNS = ["model", "train_level", "size", "seed", "train_facts", "domain", "headline", "micro",
           "L0", "L1", "L2", "L3", "L4", "n_L0", "n_L1", "n_L2", "n_L3", "n_L4"]


def grid_rows(metrics_root: Path, models: list[str]) -> list[dict]:
    """One row per (model, cell, domain); the base model is train_level 'base', size 0."""
    rows = []
    for model in models:
        for path in sorted((metrics_root / "eval" / model).glob("*.json")):
            metrics = json.loads(path.read_text())
            match = CELL.match(path.stem)
            cell = ({"train_level": "base", "size": "0", "seed": ""} if path.stem == "base" else
                    {"train_level": match["level"], "size": match["size"], "seed": match["seed"]} if match else None)
            if cell is None or metrics.get("skipped"):
                continue
            for domain in ("id", "ood"):
                rows.append({"model": model, **cell, "train_facts": metrics.get("train_facts", 0), "domain": domain,
                             **{k: metrics[domain].get(k) for k in COLUMNS[6:13]},
                             **{f"n_L{lv}": n for lv, n in enumerate(metrics[domain]["n"])}})
    return rows


def summary(rows: list[dict]) -> dict:
    """Headline accuracies keyed model -> cell -> domain: what `dvc exp show` and `metrics diff` compare."""
    out: dict = {}
    for row in rows:
        cell = "base" if row["train_level"] == "base" else cell_name(row["train_level"], row["size"], row["seed"])
        out.setdefault(row["model"], {}).setdefault(cell, {})[row["domain"]] = row["headline"]
    return out


@click.command("summarize")
@params_option
@click.option("--metrics-root", default="metrics", show_default=True, type=click.Path(path_type=Path))
def main(params_file: str, metrics_root: Path) -> None:
    """Collect every evaluated cell into metrics/grid.csv (all levels) and metrics/summary.json (headlines)."""
    models = list(section(load_params(params_file), "models"))
    rows = grid_rows(metrics_root, models)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(metrics_root / "grid.csv", buffer.getvalue())
    write_json(metrics_root / "summary.json", summary(rows))
    click.echo(f"summarize: {len(rows)} rows -> {metrics_root}/grid.csv, {metrics_root}/summary.json")
