"""The figures: accuracy vs SFT size, train x test level heat maps, level distributions, cross-model agreement."""
from __future__ import annotations

import itertools
from pathlib import Path

from memqa import paths
from memqa.config import Params
from memqa.grid import grid_levels, read_grid
from memqa.io import read_jsonl, write_csv, write_json
from memqa.stats import cohen_kappa

DOMAIN_TITLES = {"id": "in-domain", "ood": "out-of-domain"}


def _size(row: dict) -> int:
    return int(row["train_facts"]) if row["size"] == "all" else int(row["size"])


def plot_acc_vs_size(plt, rows: list[dict], model: str, out: Path, dpi: int) -> list[dict]:
    """Headline accuracy vs training size, one line per training level; error bars are the 95% bootstrap
    interval over seeds and test facts (grid.csv), the base's interval a grey band."""
    data = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (domain, title) in zip(axes, DOMAIN_TITLES.items(), strict=True):
        mine = [r for r in rows if r["model"] == model and r["domain"] == domain and r["headline"] is not None]
        for level in sorted({r["train_level"] for r in mine if r["train_level"] != "base"}):
            points = sorted((r for r in mine if r["train_level"] == level), key=_size)
            sizes, means = [_size(r) for r in points], [r["headline"] for r in points]
            errors = [[r["headline"] - r["headline_low"] for r in points],
                      [r["headline_high"] - r["headline"] for r in points]]
            ax.errorbar(sizes, means, yerr=errors, marker="o", capsize=3, label=f"train level {level}")
            data += [{"model": model, "domain": domain, "train_level": level, "size": _size(r),
                      "headline": r["headline"], "low": r["headline_low"], "high": r["headline_high"],
                      "seeds": r["seeds"]} for r in points]
        for r in (r for r in mine if r["train_level"] == "base"):
            ax.axhline(r["headline"], color="grey", linestyle="--", label="untrained base")
            ax.axhspan(r["headline_low"], r["headline_high"], color="grey", alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("training facts (log scale)")
        ax.set_title(f"{title} test")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("headline accuracy (%), 95% interval")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{model}: QA accuracy vs SFT data size, by memory level of the training data")
    fig.tight_layout()
    fig.savefig(out / "png" / f"acc_vs_size-{model}.png", dpi=dpi)
    plt.close(fig)
    return data


def _diagonal_cells(row: dict | None, levels: range) -> tuple[list[float], list[str]]:
    """One heat-map row: accuracy per test level (NaN where none) and its label (value, interval, facts)."""
    values, texts = [], []
    for test_level in levels:
        value = None if row is None else row[f"L{test_level}"]
        values.append(float("nan") if value is None else value)
        texts.append("-" if value is None else f"{value:.0f}\n[{row[f'L{test_level}_low']:.0f}, "
                     f"{row[f'L{test_level}_high']:.0f}]\nn={row[f'n_L{test_level}']}")
    return values, texts


def _diagonal_data(row: dict | None, model: str, domain: str, level: str, levels: range) -> list[dict]:
    """The plot data of one heat-map row (plots/data/diagonal.csv)."""
    data = []
    for test_level in levels:
        value = None if row is None else row[f"L{test_level}"]
        data.append({"model": model, "domain": domain, "train_level": level, "test_level": test_level,
                     "accuracy": value, "low": None if value is None else row[f"L{test_level}_low"],
                     "high": None if value is None else row[f"L{test_level}_high"],
                     "n": None if row is None else row[f"n_L{test_level}"]})
    return data


def _diagonal_panel(fig, ax, mine: list[dict], domain: str, size: str, train_levels: list[str],
                    levels: range) -> list[dict]:
    """One domain's train x test level heat map at one size; returns its plot data."""
    grid, labels, data = [], [], []
    for level in train_levels:
        row = next((r for r in mine if r["domain"] == domain and r["train_level"] == level
                    and (level == "base" or r["size"] == size)), None)
        values, texts = _diagonal_cells(row, levels)
        grid.append(values)
        labels.append(texts)
        data += _diagonal_data(row, mine[0]["model"], domain, level, levels)
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for i, row_texts in enumerate(labels):
        for j, text in enumerate(row_texts):
            value = grid[i][j]
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                    color="white" if value != value or value < 60 else "black")
    ax.set_xticks(range(len(levels)), [str(lv) for lv in levels])
    ax.set_yticks(range(len(train_levels)), [f"train {lv}" if lv != "base" else "base (0 facts)"
                                              for lv in train_levels])
    ax.set_xlabel("test memory level")
    ax.set_title(f"{DOMAIN_TITLES[domain]}, n={size}")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    return data


def plot_diagonal(plt, rows: list[dict], model: str, out: Path, dpi: int) -> list[dict]:
    """Train level x test level accuracy at the largest numeric size (over seeds), id and ood; each cell shows
    the accuracy, its 95% interval and the number of test facts."""
    mine = [r for r in rows if r["model"] == model]
    sizes = [int(r["size"]) for r in mine if r["train_level"] != "base" and r["size"].isdigit()]
    if not sizes:
        return []
    train_levels = ["base"] + sorted({r["train_level"] for r in mine if r["train_level"] != "base"})
    fig, axes = plt.subplots(1, 2, figsize=(13, 1.2 + 0.9 * len(train_levels)))
    data = []
    for ax, domain in zip(axes, DOMAIN_TITLES, strict=True):
        data += _diagonal_panel(fig, ax, mine, domain, str(max(sizes)), train_levels, grid_levels(rows))
    fig.suptitle(f"{model}: accuracy [95% interval] by training level (rows) and test level (columns)")
    fig.tight_layout()
    fig.savefig(out / "png" / f"diagonal-{model}.png", dpi=dpi)
    plt.close(fig)
    return data


def plot_levels(plt, scores: dict[str, list[dict]], levels: range, out: Path, dpi: int) -> list[dict]:
    data = []
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    width = 0.8 / max(1, len(scores))
    for ax, group in zip(axes, ("train", "test_id", "test_ood"), strict=True):
        for k, (model, rows) in enumerate(scores.items()):
            mine = [r for r in rows if r["group"] == group]
            counts = [sum(r["level"] == lv for r in mine) for lv in levels]
            shares = [100 * c / max(1, len(mine)) for c in counts]
            ax.bar([lv + k * width for lv in levels], shares, width=width, label=model)
            data += [{"model": model, "group": group, "level": lv, "facts": c, "share": round(s, 2)}
                     for lv, c, s in zip(levels, counts, shares, strict=True)]
        ax.set_xticks([lv + width * (len(scores) - 1) / 2 for lv in levels], [str(lv) for lv in levels])
        ax.set_xlabel("memory level")
        ax.set_title(group.replace("_", " "))
    axes[0].set_ylabel("share of facts (%)")
    axes[-1].legend(fontsize=8)
    fig.suptitle("Memory-level distribution of the probed facts, per model")
    fig.tight_layout()
    fig.savefig(out / "png" / "levels.png", dpi=dpi)
    plt.close(fig)
    return data


def plot_cross_model(plt, scores: dict[str, list[dict]], levels: range, out: Path, dpi: int) -> dict:
    """Level under model A vs model B for the same facts, with Cohen's kappa; {} with fewer than 2 models."""
    pairs = list(itertools.combinations(scores, 2))
    if not pairs:
        return {}
    agreement = {}
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.2), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        levels_b = {r["fact_id"]: r["level"] for r in scores[b]}
        shared = [(r["level"], levels_b[r["fact_id"]]) for r in scores[a] if r["fact_id"] in levels_b]
        matrix = [[sum(1 for x, y in shared if x == i and y == j) for j in levels] for i in levels]
        agreement[f"{a}~{b}"] = {"facts": len(shared),
                                 "cohen_kappa": cohen_kappa([x for x, _ in shared], [y for _, y in shared]),
                                 "same_level": round(sum(x == y for x, y in shared) / max(1, len(shared)), 4)}
        ax.imshow(matrix, cmap="Blues")
        for i, j in itertools.product(levels, levels):
            ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(levels)), [str(lv) for lv in levels])
        ax.set_yticks(range(len(levels)), [str(lv) for lv in levels])
        ax.set_xlabel(f"level under {b}")
        ax.set_ylabel(f"level under {a}")
        ax.set_title(f"{len(shared)} facts, Cohen's kappa {agreement[f'{a}~{b}']['cohen_kappa']}")
    fig.suptitle("Memory levels of the same facts under two models")
    fig.tight_layout()
    fig.savefig(out / "png" / "cross_model.png", dpi=dpi)
    plt.close(fig)
    return agreement


def run_plot(params: Params, out: Path, grid_path: Path = paths.GRID, probe_root: Path = paths.PROBE_DATA) -> dict:
    """Every figure of the params' models (plot.dpi) from grid.csv and the probe scores, and their plot data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, dpi, levels = list(params.models), params.plot.dpi, range(params.probe.n_levels)
    rows = read_grid(grid_path)
    (out / "png").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    scores = {m: read_jsonl(probe_root / paths.scores(m).relative_to(paths.PROBE_DATA)) for m in models}
    size_data, diagonal_data = [], []
    for model in models:
        size_data += plot_acc_vs_size(plt, rows, model, out, dpi)
        diagonal_data += plot_diagonal(plt, rows, model, out, dpi)
    level_data = plot_levels(plt, scores, levels, out, dpi)
    agreement = plot_cross_model(plt, scores, levels, out, dpi)
    data = out / "data"
    write_csv(data / "acc_vs_size.csv", size_data,
              ["model", "domain", "train_level", "size", "headline", "low", "high", "seeds"])
    write_csv(data / "diagonal.csv", diagonal_data,
              ["model", "domain", "train_level", "test_level", "accuracy", "low", "high", "n"])
    write_csv(data / "levels.csv", level_data, ["model", "group", "level", "facts", "share"])
    write_json(data / "cross_model.json", agreement)
    return agreement
