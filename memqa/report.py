"""REPORT.md: the verdict table first, then what was run (data, precision, deviations from the paper), the level
distributions, the grid with intervals, the figures, and a side-by-side with the published numbers."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from memqa.accuracy import DOMAINS
from memqa.config import section
from memqa.grid import current_cells, grid_levels
from memqa.memory import resolution
from memqa.verdicts import facts_to_decide

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


def interval(value, low, high) -> str:
    return "-" if value is None else f"{value:.1f} [{low:.1f}, {high:.1f}]"


def headline_by_level(rows: list[dict], model: str, domain: str) -> dict[str, float]:
    """Mean headline per training level over its sizes (each already a mean over seeds), base included."""
    out: dict[str, list[float]] = {}
    for r in rows:
        if r["model"] == model and r["domain"] == domain and r["headline"] is not None:
            out.setdefault(r["train_level"], []).append(r["headline"])
    return {k: statistics.mean(v) for k, v in out.items()}


def verdict_table(verdicts: list[dict]) -> list[str]:
    lines = ["| claim | model | domain | verdict | effect [95% interval] | same, relations in both training sets | "
             "test facts | seeds | statistic |", "|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        effect, restricted = v["effect"], v["restricted_to_shared_relations"]
        shown = "-" if effect is None else interval(effect["value"], effect["low"], effect["high"])
        same = "-" if restricted is None else (interval(restricted["value"], restricted["low"], restricted["high"])
                                               + f", {restricted['facts']} facts")
        note = f" ({v['note']})" if v["note"] else ""
        lines.append(f"| {v['claim']} | {v['model']} | {v['domain']} | **{v['verdict']}** | {shown} | {same} | "
                     f"{'-' if effect is None else effect['facts']} | {'-' if effect is None else effect['seeds']} | "
                     f"{v['statistic']}{note} |")
    return lines


def decidability(verdicts: list[dict], params: dict, splits: dict[str, dict]) -> list[str]:
    """Which claims this run decides, which need more test facts (projected from the measured intervals), and
    which need what this configuration cannot give (a second model, memory levels the model barely fills)."""
    decided = [v for v in verdicts if v["verdict"] != "inconclusive"]
    per_relation = section(params, "download")["per_relation"].get("test")
    min_facts = section(params, "report")["min_level_facts"]
    out = ["### What this run can decide", "",
           f"Decided here: {len(decided)} of {len(verdicts)} claim tests"
           + (": " + "; ".join(f"{v['claim']} ({v['model']}, {v['domain']}: {v['verdict']})" for v in decided)
              if decided else "") + ".", ""]
    more = []
    for v in verdicts:
        factor = facts_to_decide(v)
        if factor is None:
            if v["verdict"] == "inconclusive" and v["note"]:
                more.append(f"- {v['claim']} ({v['model']}, {v['domain']}): {v['note']}.")
            continue
        effect = v["effect"]
        if factor == float("inf"):
            more.append(f"- {v['claim']} ({v['model']}, {v['domain']}): the effect ({effect['value']:.1f}) sits on "
                        f"the threshold ({v['threshold']:g}); no amount of data decides it at this effect.")
            continue
        facts = effect["facts"] * factor
        hint = (f", i.e. `download.per_relation.test` ~{per_relation * factor:,.0f}"
                if isinstance(per_relation, int) and per_relation else "")
        more.append(f"- {v['claim']} ({v['model']}, {v['domain']}): effect {effect['value']:.1f}, interval "
                    f"+-{(effect['high'] - effect['low']) / 2:.1f} on {effect['facts']} test facts and "
                    f"{effect['seeds']} seeds; to clear the threshold ({v['threshold']:g}) at this effect, about "
                    f"{factor:.1f}x the test facts (~{facts:,.0f}){hint}.")
    if more:
        out += ["Undecided here, and what would decide them (projected from this run's intervals: a 95% interval "
                "narrows as one over the square root of the test facts; more seeds narrow it too):", "", *more, ""]
    thin = []
    for model, split in splits.items():
        for domain in ("test_id", "test_ood"):
            few = [lv for lv, n in enumerate(split["level_counts"][domain]) if n < min_facts]
            if few:
                thin.append(f"{model} {domain.removeprefix('test_')}: levels {few}")
    if thin:
        out += [f"Test levels holding fewer than {min_facts} facts, so no claim about them is tested here: "
                + "; ".join(thin) + ". Small models place few facts at high memory levels (see Memory levels); "
                "claims about levels 2-4 need the paper's larger models and sampling probe (a GPU: "
                "presets/paper.args, README \"Paper scale\").", ""]
    return out


def _with_interval(row: dict, key: str) -> str:
    """row[key], followed by its 95% interval row[key_ci] when the crosscheck recorded one."""
    interval = row.get(f"{key}_ci")
    return f"{row.get(key, '?')}" + (f" [{interval[0]}, {interval[1]}]" if interval else "")


def estimator_agreement(params: dict, results_dir: Path) -> list[str]:
    """Which estimator made the levels, and its agreement with the paper's sampling protocol as measured by
    benchmarks/probe_crosscheck.py on held-out facts of each model (when that result is present)."""
    probe = section(params, "probe")
    method = probe["method"]
    if method == "rao_blackwell":
        short = "_h16" if probe.get("rb_max_new_tokens") == 16 else ""
        name = f"rao_blackwell_k{probe.get('rb_samples', 2)}{short}"
    else:
        name = method
    out = [f"Levels made by `probe.method: {method}`"
           + (" (the paper's protocol)." if method == "sample" else
              "; its agreement with the paper's sampling protocol (benchmarks/probe_crosscheck.py, held-out "
              "REPORT half of facts stratified over the estimator's range; Spearman of R, Cohen's kappa of levels, "
              "[95% bootstrap intervals over those facts]):")]
    if method == "sample":
        return out + [""]
    for model in section(params, "models"):
        path = results_dir / f"probe_crosscheck-{model}.json"
        result = json.loads(path.read_text()) if path.is_file() else {}
        row = result.get("summary", {}).get(name)
        if row is None:
            out.append(f"- {model}: not measured (run benchmarks/probe_crosscheck.py --model {model}).")
            continue
        ceiling = result.get("sampling_noise_ceiling", {})
        # The pipeline calls level 0 below the protocol's resolution; the crosscheck's headline kappa uses a
        # level-0 threshold (and calibration) fitted on its FIT half, which these levels did not get.
        out.append(f"- {model}: Spearman {_with_interval(row, 'spearman_report')}; Cohen's kappa of the levels as "
                   f"made here (level 0 below 1/{round(1 / resolution(probe['templates'], probe['samples']))}) "
                   f"{_with_interval(row, 'kappa_report_raw')}, with a level-0 threshold and calibration "
                   f"({row.get('calibration', '?')}) fitted on the FIT half {_with_interval(row, 'kappa_report')}; on "
                   f"{result['selection']['report']} held-out facts ({result['selection']['facts']} scored), at "
                   f"{row['gflops_vs_sample']}x less compute than sampling; sampling against itself: Spearman "
                   f"{ceiling.get('spearman_ceiling_report', '?')}, kappa {ceiling.get('kappa_median', '?')}.")
    return out + [""]


def stage_precisions(metrics_root: Path, params: dict, stage: str) -> dict[str, str]:
    """model -> the precision(s) the SFT or evaluation metrics of the current grid's cells record (one value when
    all cells agree); files of cells the params no longer ask for are not read."""
    found = {}
    for model in section(params, "models"):
        cells = [c["cell"] for c in current_cells([model], section(params, "split"))
                 if not (stage == "sft" and c["cell"] == "base")]
        files = [metrics_root / stage / model / f"{cell}.json" for cell in cells]
        recorded = [json.loads(p.read_text()).get("precision") for p in files if p.is_file()]
        values = sorted({v for v in recorded if v})  # a cell skipped for an empty training set records none
        if values:
            found[model] = " / ".join(f"`{v}`" for v in values)
    return found


def build_report(params: dict, rows: list[dict], verdicts: list[dict], metrics_root: Path, plots_dir: Path,
                 reference: dict, results_dir: Path) -> str:
    models = list(section(params, "models"))
    levels = grid_levels(rows)
    # each model's split metrics (level counts, train/test overlap, short cells), read once
    splits = {m: json.loads((metrics_root / m / "split.json").read_text()) for m in models
              if (metrics_root / m / "split.json").is_file()}
    report = section(params, "report")
    out = ["# memqa report", "",
           "Generated by `memqa report` (a DVC stage) from this run's metrics; every number below is measured "
           "in this run unless it is marked as published.", "", "## Verdicts", "",
           "Each claim of Ye et al. 2024 as a test with a stated statistic (points of accuracy). Intervals are 95% "
           "bootstrap intervals resampling seeds (training sets) and test facts; comparisons are paired over the "
           "same test facts and pool every size and seed of a training level. **reproduced**: the interval lies "
           "on the claim's side; **contradicted**: on the other side; **inconclusive**: it straddles (or too few "
           f"facts). Test levels with fewer than {report['min_level_facts']} facts are left out; the non-inferiority "
           f"margin of \"60 points suffice\" is {report['margin']:g} points.", "",
           *verdict_table(verdicts), "", *decidability(verdicts, params, splits), "## What was run", "",
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
            + "; ".join(f"{m}: SFT {p}" for m, p in stage_precisions(metrics_root, params, "sft").items())
            + "; ".join(["", *(f"{m}: evaluation (cells and the untrained base alike) {p}"
                             for m, p in stage_precisions(metrics_root, params, "eval").items())]) + "."]
    for model, split in splits.items():
        overlap = split.get("train_test_overlap")
        if overlap and overlap["facts"]:
            fate = "dropped from every training set" if overlap["dropped"] else "kept (split.drop_test_overlap)"
            out.append(f"\n{model}: {overlap['facts']} train facts repeat a test question word for word "
                       f"({overlap['per_relation']}); {fate}.")
    out += ["", "Params that differ from the paper's protocol:", "", "| param | this run | paper |", "|---|---|---|",
            *deviations(params)]
    out += ["", "## Memory levels", "", *estimator_agreement(params, results_dir),
            f"Facts per level {list(levels)}:", "",
            "| model | train pool | in-domain test | out-of-domain test |", "|---|---|---|---|"]
    for model, split in splits.items():
        counts = split["level_counts"]
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
    out += ["## Results grid", "", "Accuracy (%) per test level, headline (mean over the test levels with at least "
            f"{report['min_level_facts']} facts) and micro accuracy: mean over seeds [95% interval over seeds and "
            "test facts]; `-` = no test fact of that level.", "",
            "| model | train level | size | seeds | train facts | domain | " + "".join(f"L{lv} (n) | " for lv in levels)
            + "headline | micro |", "|---|---|---|---|---|---|" + "---|" * len(levels) + "---|---|"]
    for r in rows:
        accuracies = " | ".join(f"{interval(r[f'L{lv}'], r[f'L{lv}_low'], r[f'L{lv}_high'])} ({r[f'n_L{lv}']})"
                                for lv in levels)
        out.append(f"| {r['model']} | {r['train_level']} | {r['size']} | {r['seeds']} | {fmt(r['train_facts'])} | "
                   f"{r['domain']} | {accuracies} | {interval(r['headline'], r['headline_low'], r['headline_high'])} | "
                   f"{interval(r['micro'], r['micro_low'], r['micro_high'])} |")
    split_cells = [(model, c) for model, split in splits.items() for c in split["cells"]
                   if c["shortfall"] or c["skipped"]]
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
            "level (mean over its sizes and seeds). Different models and scale: compare the shape, not the values.", "",
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
    out += ["", "Published claims (ye2024): " + "; ".join(reference.get("claims_ye2024", [])) + ".", ""]
    return "\n".join(out) + "\n"
