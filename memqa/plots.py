"""The figures: accuracy vs SFT size, train x test level heat maps, level distributions, cross-model agreement."""
from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from pathlib import Path

from memqa.grid import grid_levels, read_grid
from memqa.io import read_jsonl, write_csv, write_json

DOMAIN_TITLES = {"id": "in-domain", "ood": "out-of-domain"}


def plot_acc_vs_size(plt, rows: list[dict], model: str, out: Path, dpi: int) -> list[dict]:
    """Headline accuracy vs training size, one line per training level, seed spread as error bars."""
    data = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (domain, title) in zip(axes, DOMAIN_TITLES.items(), strict=True):
        mine = [r for r in rows if r["model"] == model and r["domain"] == domain]
        base = [r["headline"] for r in mine if r["train_level"] == "base"]
        for level in sorted({r["train_level"] for r in mine if r["train_level"] != "base"}):
            by_size = defaultdict(list)
            for r in mine:
                if r["train_level"] == level and r["headline"] is not None:
                    by_size[int(r["train_facts"]) if r["size"] == "all" else int(r["size"])].append(r["headline"])
            sizes = sorted(by_size)
            means = [statistics.mean(by_size[s]) for s in sizes]
            spread = [statistics.pstdev(by_size[s]) if len(by_size[s]) > 1 else 0.0 for s in sizes]
            ax.errorbar(sizes, means, yerr=spread, marker="o", capsize=3, label=f"train level {level}")
            data += [{"model": model, "domain": domain, "train_level": level, "size": s, "headline": round(m, 2),
                      "seed_std": round(sd, 2)} for s, m, sd in zip(sizes, means, spread, strict=True)]
        if base:
            ax.axhline(base[0], color="grey", linestyle="--", label="untrained base")
        ax.set_xscale("log")
        ax.set_xlabel("training facts (log scale)")
        ax.set_title(f"{title} test")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("headline accuracy (%; mean over test levels present)")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"{model}: QA accuracy vs SFT data size, by memory level of the training data")
    fig.tight_layout()
    fig.savefig(out / "png" / f"acc_vs_size-{model}.png", dpi=dpi)
    plt.close(fig)
    return data


def plot_diagonal(plt, rows: list[dict], model: str, out: Path, dpi: int) -> list[dict]:
    """Train level x test level accuracy at the largest numeric size (mean over seeds), id and ood."""
    data = []
    levels = grid_levels(rows)
    mine = [r for r in rows if r["model"] == model]
    sizes = [int(r["size"]) for r in mine if r["train_level"] != "base" and r["size"].isdigit()]
    if not sizes:
        return data
    size = str(max(sizes))
    train_levels = ["base"] + sorted({r["train_level"] for r in mine if r["train_level"] != "base"})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (domain, title) in zip(axes, DOMAIN_TITLES.items(), strict=True):
        grid = []
        for level in train_levels:
            cells = [r for r in mine if r["domain"] == domain and r["train_level"] == level
                     and (level == "base" or r["size"] == size)]
            row = []
            for test_level in levels:
                values = [c[f"L{test_level}"] for c in cells if c[f"L{test_level}"] is not None]
                value = statistics.mean(values) if values else float("nan")
                row.append(value)
                data.append({"model": model, "domain": domain, "train_level": level, "test_level": test_level,
                             "accuracy": None if value != value else round(value, 2)})
            grid.append(row)
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                ax.text(j, i, "-" if value != value else f"{value:.0f}", ha="center", va="center",
                        color="white" if value != value or value < 60 else "black", fontsize=8)
        ax.set_xticks(range(len(levels)), [str(lv) for lv in levels])
        ax.set_yticks(range(len(train_levels)), [f"train {lv}" if lv != "base" else "base (0 facts)"
                                                  for lv in train_levels])
        ax.set_xlabel("test memory level")
        ax.set_title(f"{title}, n={size}")
        fig.colorbar(image, ax=ax, label="accuracy (%)")
    fig.suptitle(f"{model}: accuracy by training level (rows) and test level (columns)")
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
    from sklearn.metrics import cohen_kappa_score

    pairs = list(itertools.combinations(scores, 2))
    if not pairs:
        return {}
    agreement = {}
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.2), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs, strict=True):
        levels_b = {r["fact_id"]: r["level"] for r in scores[b]}
        shared = [(r["level"], levels_b[r["fact_id"]]) for r in scores[a] if r["fact_id"] in levels_b]
        matrix = [[sum(1 for x, y in shared if x == i and y == j) for j in levels] for i in levels]
        kappa = cohen_kappa_score([x for x, _ in shared], [y for _, y in shared]) if shared else float("nan")
        agreement[f"{a}~{b}"] = {"facts": len(shared), "cohen_kappa": None if kappa != kappa else round(kappa, 4),
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


def run_plot(models: list[str], grid_path: Path, probe_root: Path, out: Path, dpi: int, levels: range) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_grid(grid_path)
    (out / "png").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    scores = {m: read_jsonl(probe_root / m / "scores.jsonl") for m in models}
    size_data, diagonal_data = [], []
    for model in models:
        size_data += plot_acc_vs_size(plt, rows, model, out, dpi)
        diagonal_data += plot_diagonal(plt, rows, model, out, dpi)
    level_data = plot_levels(plt, scores, levels, out, dpi)
    agreement = plot_cross_model(plt, scores, levels, out, dpi)
    data = out / "data"
    write_csv(data / "acc_vs_size.csv", size_data, ["model", "domain", "train_level", "size", "headline", "seed_std"])
    write_csv(data / "diagonal.csv", diagonal_data, ["model", "domain", "train_level", "test_level", "accuracy"])
    write_csv(data / "levels.csv", level_data, ["model", "group", "level", "facts", "share"])
    write_json(out / "data" / "cross_model.json", agreement)
    return agreement
