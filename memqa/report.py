"""REPORT.md: what was run, the grid, the level distributions, the figures, a side-by-side with the published
numbers, and which of the paper's findings this run reproduces."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from memqa.accuracy import DOMAINS, headline
from memqa.config import section
from memqa.grid import grid_levels

PAPER = {  # the paper's protocol, for listing this run's deviations
    ("probe", "method"): "sample", ("probe", "templates"): 21, ("probe", "samples"): 10,
    ("probe", "temperature"): 0.7, ("probe", "max_new_tokens"): 32, ("probe", "matcher"): "contains",
    ("sft", "method"): "full", ("sft", "lr_full"): 1.0e-5, ("sft", "epochs"): 1, ("sft", "batch_size"): 8,
    ("split", "sizes"): [60, 120, 240, 480, 960, 1920, "all"],
    ("download", "per_relation"): {"train": None, "dev": None, "test": None},
    ("evaluate", "max_new_tokens"): 16,
}


def fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def deviations(params: dict) -> list[str]:
    lines = []
    for (sec, key), paper in PAPER.items():
        ours = params.get(sec, {}).get(key)
        if ours != paper:
            lines.append(f"| `{sec}.{key}` | {ours} | {paper} |")
    return lines


MIN_LEVEL_FACTS = 5  # a test level with fewer facts does not vote in the findings


def voting_levels(row: dict) -> list[int]:
    levels = range(sum(1 for key in row if key.startswith("n_L")))
    return [lv for lv in levels if row[f"L{lv}"] is not None and row.get(f"n_L{lv}", 0) >= MIN_LEVEL_FACTS]


def robust_headline(row: dict) -> float | None:
    """The headline over the test levels holding at least MIN_LEVEL_FACTS facts."""
    return headline([row[f"L{lv}"] for lv in voting_levels(row)])


def headline_by_level(rows: list[dict], model: str, domain: str, robust: bool = False) -> dict[str, float]:
    """Mean headline per training level (over sizes and seeds), base included."""
    out: dict[str, list[float]] = {}
    for r in rows:
        value = robust_headline(r) if robust else r["headline"]
        if r["model"] == model and r["domain"] == domain and value is not None:
            out.setdefault(r["train_level"], []).append(value)
    return {k: statistics.mean(v) for k, v in out.items()}


def findings(rows: list[dict], models: list[str], sizes: list) -> list[str]:
    """Each of the paper's claims, checked on this run's numbers: reproduced, not reproduced, or not tested.

    Only test levels with at least MIN_LEVEL_FACTS facts vote; "headline" here is their mean accuracy.
    """
    lines = [f"Only test levels holding at least {MIN_LEVEL_FACTS} facts count below; headline = their mean.", ""]
    numeric = sorted({int(s) for s in sizes if str(s).isdigit()})
    best_level = {}
    for model in models:
        mine = [r for r in rows if r["model"] == model and r["train_level"] != "base"]
        if not mine:
            lines.append(f"- **{model}**: no evaluated training cell (all skipped?); nothing to check.")
            continue
        if len(numeric) > 1 and 60 in numeric:
            by_size = {}
            for size in numeric:
                values = [robust_headline(r) for r in mine if r["size"] == str(size)]
                values = [v for v in values if v is not None]
                if values:
                    by_size[size] = statistics.mean(values)
            if 60 in by_size:
                best = max(by_size.values())
                verdict = "reproduced" if by_size[60] >= best - 5 else "not reproduced"
                lines.append(f"- **{model}, 60 points suffice**: {verdict} (headline at 60: {by_size[60]:.1f}, "
                             f"best size: {best:.1f}).")
        else:
            lines.append(f"- **{model}, 60 points suffice**: not tested (one training size: {numeric or sizes}).")
        rising = []
        for r in mine:
            levels = voting_levels(r)
            if len(levels) >= 2:
                rising.append(r[f"L{levels[-1]}"] > r[f"L{levels[0]}"])
        if rising:
            lines.append(f"- **{model}, higher accuracy on higher-memory test facts**: "
                         f"{'reproduced' if sum(rising) >= 0.8 * len(rising) else 'not reproduced'} "
                         f"(highest voting test level above the lowest in {sum(rising)}/{len(rising)} cells).")
        hits, tested = 0, 0
        for domain in DOMAINS:
            for lv in grid_levels(rows):
                # every size and seed of a training level counts: its mean, not whichever row sorts last
                values: dict[str, list[float]] = {}
                for r in mine:
                    if r["domain"] == domain and lv in voting_levels(r):
                        values.setdefault(r["train_level"], []).append(r[f"L{lv}"])
                column = {level: statistics.mean(v) for level, v in values.items()}
                if str(lv) in column and len(column) > 1:
                    tested += 1
                    hits += column[str(lv)] >= max(column.values())
        lines.append(f"- **{model}, diagonal** (training on level i best for test level i): " +
                     (f"{'reproduced' if hits > tested / 2 else 'not reproduced'} ({hits}/{tested} test-level "
                      "columns where level i was trained and tested)." if tested else
                      "not tested (no test level with two or more training levels)."))
        for domain in DOMAINS:
            means = {k: v for k, v in headline_by_level(rows, model, domain, robust=True).items() if k != "base"}
            if "0" in means and len(means) > 1:
                others = statistics.mean(v for k, v in means.items() if k != "0")
                lines.append(f"- **{model}, level-0 data hurts ({domain})**: "
                             f"{'reproduced' if means['0'] < others else 'not reproduced'} "
                             f"(train-0 {means['0']:.1f} vs other levels {others:.1f}).")
            if means:
                best = max(means, key=means.get)
                best_level.setdefault(model, best)
                lines.append(f"- **{model}, best training level ({domain})**: level {best} ({means[best]:.1f}).")
    if len(best_level) > 1:
        differs = len(set(best_level.values())) > 1
        lines.append(f"- **The best SFT set is model-specific**: {'reproduced' if differs else 'not reproduced'} "
                     f"(in-domain best training level: {', '.join(f'{m} {lv}' for m, lv in best_level.items())}).")
    return lines


def stage_precisions(metrics_root: Path, models: list[str], stage: str) -> dict[str, str]:
    """model -> the precision(s) its SFT or evaluation metrics record (one value when all cells agree)."""
    found = {}
    for model in models:
        values = sorted({json.loads(p.read_text()).get("precision") or "?"
                         for p in (metrics_root / stage / model).glob("*.json")})
        if values:
            found[model] = " / ".join(f"`{v}`" for v in values)
    return found


def build_report(params: dict, rows: list[dict], metrics_root: Path, plots_dir: Path, reference: dict) -> str:
    models = list(section(params, "models"))
    levels = grid_levels(rows)
    out = ["# memqa report", "",
           "Generated by `memqa report` (a DVC stage) from this run's metrics; every number below is measured "
           "in this run unless it is marked as published.", "", "## What was run", "",
           "| model | source | parameters | dtype |", "|---|---|---|---|"]
    for model in models:
        info_path = metrics_root / model / "model.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        out.append(f"| {model} | `{info.get('source', '?')}` | {info.get('parameters', 0):,} | "
                   f"{info.get('dtype', '?')} |")
    download = metrics_root / "download.json"
    if download.is_file():
        meta = json.loads(download.read_text())
        out += ["", f"Data: EntityQuestions, {meta['facts']} facts kept "
                    f"(per relation and split: {meta['subsample']['per_relation']}, seed {meta['subsample']['seed']})."]
    out += ["", "Precision each stage ran in: probe " + f"`{section(params, 'probe')['dtype']}` weights; "
            + "; ".join(f"{m}: SFT {p}" for m, p in stage_precisions(metrics_root, models, "sft").items())
            + "; ".join(["", *(f"{m}: evaluation (cells and the untrained base alike) {p}"
                             for m, p in stage_precisions(metrics_root, models, "eval").items())]) + "."]
    for model in models:
        path = metrics_root / model / "split.json"
        overlap = json.loads(path.read_text()).get("train_test_overlap") if path.is_file() else None
        if overlap:
            fate = "dropped from every training set" if overlap["dropped"] else "kept (split.drop_test_overlap)"
            out.append(f"\n{model}: {overlap['facts']} train facts repeat a test question word for word "
                       f"({overlap['per_relation']}); {fate}.")
    out += ["", "Params that differ from the paper's protocol:", "", "| param | this run | paper |", "|---|---|---|",
            *deviations(params)]
    out += ["", "## Memory levels", "", f"Facts per level {list(levels)}:", "",
            "| model | train pool | in-domain test | out-of-domain test |", "|---|---|---|---|"]
    for model in models:
        path = metrics_root / model / "split.json"
        if path.is_file():
            counts = json.loads(path.read_text())["level_counts"]
            out.append(f"| {model} | {counts['train']} | {counts['test_id']} | {counts['test_ood']} |")
    for name, counts in reference.get("level_counts_ye2025", {}).items():
        out.append(f"| {name} (published, ye2025) | {counts['train']} | {counts['test_id']} | {counts['test_ood']} |")
    out += ["", f"![levels]({plots_dir}/png/levels.png)", ""]
    cross = plots_dir / "data" / "cross_model.json"
    if cross.is_file() and json.loads(cross.read_text()):
        for pair, agreement in json.loads(cross.read_text()).items():
            out.append(f"Level agreement {pair.replace('~', ' vs ')}: Cohen's kappa {agreement['cohen_kappa']}, "
                       f"same level for {100 * agreement['same_level']:.1f}% of {agreement['facts']} facts.")
        out += ["", f"![cross-model]({plots_dir}/png/cross_model.png)", ""]
    out += ["## Results grid", "", "Accuracy (%) per test level and headline (mean of the levels present); "
            "`-` = no test fact of that level in the subsample. The headline weighs every present level equally, "
            "so a level holding one or two test facts (see the level counts above) swings it by tens of points; "
            "micro accuracy is the steadier number on a small subsample.", "",
            "| model | train level | size | seed | train facts | domain | " + "".join(f"L{lv} | " for lv in levels)
            + "headline | micro |", "|---|---|---|---|---|---|" + "---|" * len(levels) + "---|---|"]
    for r in rows:
        accuracies = " | ".join(fmt(r[f"L{lv}"]) for lv in levels)
        out.append(f"| {r['model']} | {r['train_level']} | {r['size']} | {r['seed']} | {r['train_facts']} | "
                   f"{r['domain']} | {accuracies} | {fmt(r['headline'])} | {fmt(r['micro'])} |")
    split_cells = []
    for model in models:
        path = metrics_root / model / "split.json"
        if path.is_file():
            cells = json.loads(path.read_text())["cells"]
            split_cells += [(model, c) for c in cells if c["shortfall"] or c["skipped"]]
    if split_cells:
        out += ["", "Training sets smaller than asked (level pools run short at this subsample):", ""]
        out += [f"- {m}: level {c['level']}, size {c['size']}, seed {c['seed']}: {c['actual']} of {c['requested']}"
                f"{' (skipped)' if c['skipped'] else ''}" for m, c in split_cells]
    out += ["", "## Figures", ""]
    for model in models:
        out += [f"![accuracy vs size, {model}]({plots_dir}/png/acc_vs_size-{model}.png)", "",
                f"![train x test level, {model}]({plots_dir}/png/diagonal-{model}.png)", ""]
    out += ["## Published reference (side by side)", "",
            "Published headline accuracy (%) after full fine-tuning on 1920 facts per training level "
            "(ye2025 Table 2, LLaMA-3-8B, same pipeline as ye2024) next to this run's mean headline per training "
            "level (all sizes and seeds). Different models and scale: compare the shape, not the values.", "",
            "| train level | published id | published ood | " +
            " | ".join(f"{m} id | {m} ood" for m in models) + " |",
            "|---|---|---|" + "---|---|" * len(models)]
    published = reference.get("grid_1920_ye2025", {}).get("llama-3-8b", {})
    ours = {m: {d: headline_by_level(rows, m, d) for d in DOMAINS} for m in models}
    for lv in levels:
        pub = [published.get(d, {}).get(f"train-{lv}", [None] * 6)[-1] for d in DOMAINS]
        mine = " | ".join(f"{fmt(ours[m]['id'].get(str(lv)))} | {fmt(ours[m]['ood'].get(str(lv)))}" for m in models)
        out.append(f"| {lv} | {fmt(pub[0])} | {fmt(pub[1])} | {mine} |")
    base = " | ".join(f"{fmt(ours[m]['id'].get('base'))} | {fmt(ours[m]['ood'].get('base'))}" for m in models)
    out.append(f"| untrained base | - | - | {base} |")
    out += ["", "Published claims (ye2024): " + "; ".join(reference.get("claims_ye2024", [])) + ".", "",
            "## Which findings this run reproduces", "",
            *findings(rows, models, section(params, "split")["sizes"]), ""]
    return "\n".join(out) + "\n"
