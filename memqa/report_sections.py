"""REPORT.md's sections from the level distributions on: memory levels (and the estimator's agreement with the
paper's protocol), the results grid, the figures, and the side-by-side with the published numbers."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from memqa.accuracy import DOMAINS
from memqa.config import Params
from memqa.grid import grid_levels
from memqa.memory import resolution


def fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}" if isinstance(value, float) else str(value)


def interval(value, low, high) -> str:
    return "-" if value is None else f"{value:.1f} [{low:.1f}, {high:.1f}]"


def _with_interval(row: dict, key: str) -> str:
    """row[key], followed by its 95% interval row[key_ci] when the crosscheck recorded one."""
    interval = row.get(f"{key}_ci")
    return f"{row.get(key, '?')}" + (f" [{interval[0]}, {interval[1]}]" if interval else "")


def _crosscheck_name(params: Params, crosscheck_dtype: str | None) -> str:
    """The estimator's name in benchmarks/probe_crosscheck.py's summary, whose own runs are in crosscheck_dtype
    (its "_bf16" estimators: the model in bfloat16)."""
    probe = params.probe
    name = probe.method
    if probe.method == "rao_blackwell":
        name = f"rao_blackwell_k{probe.rb_samples}{'_h16' if probe.rb_max_new_tokens == 16 else ''}"
        name = ("screened_" if probe.rb_screen_cut is not None else "") + name
    return name + ("_bf16" if probe.dtype == "bfloat16" and crosscheck_dtype != "bfloat16" else "")


def _method_line(probe) -> str:
    """How the levels were made: the method, and the likelihood screen in front of rao_blackwell when there is one."""
    if probe.method == "rao_blackwell" and probe.rb_screen_cut is not None:
        samples = f"{probe.rb_samples} sample{'s' if probe.rb_samples > 1 else ''}"
        return (f"Levels made by `probe.method: rao_blackwell` ({samples} per template, decoded "
                f"{probe.rb_max_new_tokens or probe.max_new_tokens} tokens, {probe.dtype}) on the templates a "
                f"likelihood screen sends on (`probe.rb_screen_cut: {probe.rb_screen_cut}`: a template whose "
                f"likelihood is below it keeps that lower bound unsampled; a fact with no template sent on is level 0)")
    return f"Levels made by `probe.method: {probe.method}`"


def estimator_agreement(params: Params, results_dir: Path) -> list[str]:
    """Which estimator made the levels, and its agreement with the paper's sampling protocol as measured by
    benchmarks/probe_crosscheck.py on held-out facts of each model (when that result is present)."""
    probe = params.probe
    out = [_method_line(probe)
           + (" (the paper's protocol)." if probe.method == "sample" else
              "; its agreement with the paper's sampling protocol (benchmarks/probe_crosscheck.py, held-out "
              "REPORT half of facts stratified over the estimator's range; Spearman of R, Cohen's kappa of levels, "
              "[95% bootstrap intervals over those facts]):")]
    if probe.method == "sample":
        return out + [""]
    for model in params.models:
        path = results_dir / f"probe_crosscheck-{model}.json"
        result = json.loads(path.read_text()) if path.is_file() else {}
        name = _crosscheck_name(params, result.get("dtype"))
        row = result.get("summary", {}).get(name)
        if row is None:
            out.append(f"- {model}: not measured (run benchmarks/probe_crosscheck.py --model {model}).")
            continue
        ceiling = result.get("sampling_noise_ceiling", {})
        # The pipeline calls level 0 below the protocol's resolution; the crosscheck's headline kappa uses a
        # level-0 threshold (and calibration) fitted on its FIT half, which these levels did not get.
        out.append(f"- {model}: Spearman {_with_interval(row, 'spearman_report')}; Cohen's kappa of the levels as "
                   f"made here (level 0 below 1/{round(1 / resolution(probe.templates, probe.samples))}) "
                   f"{_with_interval(row, 'kappa_report_raw')}, with a level-0 threshold and calibration "
                   f"({row.get('calibration', '?')}) fitted on the FIT half {_with_interval(row, 'kappa_report')}; on "
                   f"{result['selection']['report']} held-out facts ({result['selection']['facts']} scored), at "
                   f"{row['gflops_vs_sample']}x less compute than sampling; sampling against itself: Spearman "
                   f"{ceiling.get('spearman_ceiling_report', '?')}, kappa {ceiling.get('kappa_median', '?')}."
                   + _population_kappa(row.get("population_report_raw"))
                   + _screen_misses(result, name))
    return out + [""]


def _population_kappa(population: dict | None) -> str:
    """The kappa of the levels as made here, weighted to every fact the probe labels (the crosscheck's strata
    oversample high scores), when the crosscheck measured it."""
    if not population:
        return ""
    if "kappa" not in population:
        return f" Weighted to the {population['facts']} facts the probe labels: not measured ({population['error']})."
    return (f" Weighted to the {population['facts']} facts the probe labels (post-stratified): kappa "
            f"{_with_interval(population, 'kappa')}.")


def _screen_misses(result: dict, name: str) -> str:
    """For a screened estimator: its template screen's fitted cut, what it samples, and the REPORT facts above
    level 0 it left unsampled (so at level 0)."""
    screen = result.get("screens", {}).get(name)
    if not name.startswith("screened_") or not screen or "missed_above_level0_report" not in screen:
        return ""
    return (f" Its screen (cut fitted on FIT: {screen['cut']:.2g}) samples "
            f"{100 * screen['population_template_share_sampled']:.1f}% of the templates (weighted to those facts) and "
            f"left {screen['missed_facts_report']} of the {screen['above_level0_report']} REPORT facts above level 0 "
            f"unsampled ({100 * screen['missed_above_level0_report']:.1f}% weighted).")


def _cross_model(plots_dir: Path) -> list[str]:
    """The level agreement between models (plots/data/cross_model.json), when there are two or more."""
    cross = plots_dir / "data" / "cross_model.json"
    agreement = json.loads(cross.read_text()) if cross.is_file() else {}
    if not agreement:
        return []
    return [*(f"Level agreement {pair.replace('~', ' vs ')}: Cohen's kappa {a['cohen_kappa']}, same level for "
              f"{100 * a['same_level']:.1f}% of {a['facts']} facts." for pair, a in agreement.items()),
            "", f"![cross-model]({plots_dir}/png/cross_model.png)", ""]


def memory_levels(params: Params, rows: list[dict], splits: dict[str, dict], reference: dict, plots_dir: Path,
                  results_dir: Path) -> list[str]:
    """The estimator, facts per level per model (and the published counts), and the cross-model agreement."""
    out = ["", "## Memory levels", "", *estimator_agreement(params, results_dir),
           f"Facts per level {list(grid_levels(rows))}:", "",
           "| model | train pool | in-domain test | out-of-domain test |", "|---|---|---|---|"]
    for model, split in splits.items():
        counts = split["level_counts"]
        out.append(f"| {model} | {counts['train']} | {counts['test_id']} | {counts['test_ood']} |")
    for name, counts in reference.get("level_counts_ye2025", {}).items():
        out.append(f"| {name} (published, ye2025) | {counts['train']} | {counts['test_id']} | {counts['test_ood']} |")
    return out + ["", f"![levels]({plots_dir}/png/levels.png)", "", *_cross_model(plots_dir)]


def _short_cells(splits: dict[str, dict]) -> list[str]:
    cells = [(model, c) for model, split in splits.items() for c in split["cells"] if c["shortfall"] or c["skipped"]]
    if not cells:
        return []
    return ["", "Training sets smaller than asked (level pools run short at this subsample):", "",
            *(f"- {m}: level {c['level']}, size {c['size']}, seed {c['seed']}: {c['actual']} of {c['requested']}"
              f"{' (skipped)' if c['skipped'] else ''}" for m, c in cells)]


def matching_artifacts(splits: dict[str, dict], bases: dict[str, dict]) -> list[str]:
    """What containment matching credits that the model may not know (memqa/artifacts.py), per model: facts whose
    gold sits in the subject, leaks between relations, and for the untrained base model the strict first-line
    exact match and the headline without the gold-in-subject facts, beside containment's."""
    out = ["## Matching artifacts", "",
           "The judge is the paper's: a normalised gold form contained in the completion (with `matching.synonyms`). "
           "It also credits an echo of a subject that holds the gold, and a gold found across a word boundary.", ""]
    for model, split in splits.items():
        found = split.get("matching_artifacts")
        if found:
            inside = ", ".join(f"{g} {fmt(100 * s if s is not None else None)}%"
                               for g, s in found["gold_in_subject"].items())
            out.append(f"- {model}: gold inside the subject: {inside}; test facts whose subject and answer a train "
                       f"fact of another relation shares: {found['cross_relation_leaks']}.")
            clean = found.get("level_counts_without_gold_in_subject")
            if clean:
                out.append("  - facts per level [0..] without the gold-in-subject facts: " + "; ".join(
                    f"{g} {list(counts.values())}" for g, counts in clean.items()) + ".")
        for domain, base in sorted((bases.get(model) or {}).items()):
            if isinstance(base, dict) and "exact_micro" in base:
                out.append(f"  - untrained base, {domain}: containment micro {fmt(base['micro'])}, first-line exact "
                           f"match {fmt(base['exact_micro'])}; headline {fmt(base['headline'])}, without the "
                           f"gold-in-subject facts {fmt(base['headline_without_gold_in_subject'])}; correct answers "
                           f"crossing a word boundary: {fmt(base['correct_crossing_a_word_boundary'])}.")
    return out + [""]


def results_grid(params: Params, rows: list[dict], splits: dict[str, dict]) -> list[str]:
    """grid.csv as a table (means and intervals), then the training sets smaller than asked."""
    levels = grid_levels(rows)
    out = ["## Results grid", "", "Accuracy (%) per test level, headline (mean over the test levels with at least "
           f"{params.report.min_level_facts} facts) and micro accuracy: mean over seeds [95% interval over seeds and "
           "test facts]; `-` = no test fact of that level.", "",
           "| model | train level | size | seeds | train facts | domain | " + "".join(f"L{lv} (n) | " for lv in levels)
           + "headline | micro |", "|---|---|---|---|---|---|" + "---|" * len(levels) + "---|---|"]
    for r in rows:
        accuracies = " | ".join(f"{interval(r[f'L{lv}'], r[f'L{lv}_low'], r[f'L{lv}_high'])} ({r[f'n_L{lv}']})"
                                for lv in levels)
        out.append(f"| {r['model']} | {r['train_level']} | {r['size']} | {r['seeds']} | {fmt(r['train_facts'])} | "
                   f"{r['domain']} | {accuracies} | {interval(r['headline'], r['headline_low'], r['headline_high'])} | "
                   f"{interval(r['micro'], r['micro_low'], r['micro_high'])} |")
    return out + _short_cells(splits)


def figures(models: list[str], plots_dir: Path) -> list[str]:
    out = ["", "## Figures", ""]
    for model in models:
        out += [f"![accuracy vs size, {model}]({plots_dir}/png/acc_vs_size-{model}.png)", "",
                f"![train x test level, {model}]({plots_dir}/png/diagonal-{model}.png)", ""]
    return out


def mean_headline_by_level(rows: list[dict], model: str, domain: str) -> dict[str, float]:
    """The mean of the grid's headlines per training level over its sizes (each already the headline rule's,
    a mean over seeds), base included; a group without a headline is left out."""
    out: dict[str, list[float]] = {}
    for r in rows:
        if r["model"] == model and r["domain"] == domain and r["headline"] is not None:
            out.setdefault(r["train_level"], []).append(r["headline"])
    return {k: statistics.mean(v) for k, v in out.items()}


def published_reference(models: list[str], rows: list[dict], reference: dict) -> list[str]:
    """ye2025's headlines at 1920 facts per training level beside this run's, and ye2024's claims."""
    out = ["## Published reference (side by side)", "",
           "Published headline accuracy (%) after full fine-tuning on 1920 facts per training level "
           "(ye2025 Table 2, LLaMA-3-8B, same pipeline as ye2024) next to this run's mean headline per training "
           "level (mean over its sizes and seeds). Different models and scale: compare the shape, not the values.", "",
           "| train level | published id | published ood | " + " | ".join(f"{m} id | {m} ood" for m in models) + " |",
           "|---|---|---|" + "---|---|" * len(models)]
    published = reference.get("grid_1920_ye2025", {}).get("llama-3-8b", {})
    ours = {m: {d: mean_headline_by_level(rows, m, d) for d in DOMAINS} for m in models}
    for lv in grid_levels(rows):
        pub = [published.get(d, {}).get(f"train-{lv}", [None] * 6)[-1] for d in DOMAINS]
        mine = " | ".join(f"{fmt(ours[m]['id'].get(str(lv)))} | {fmt(ours[m]['ood'].get(str(lv)))}" for m in models)
        out.append(f"| {lv} | {fmt(pub[0])} | {fmt(pub[1])} | {mine} |")
    base = " | ".join(f"{fmt(ours[m]['id'].get('base'))} | {fmt(ours[m]['ood'].get('base'))}" for m in models)
    out.append(f"| untrained base | - | - | {base} |")
    return out + ["", "Published claims (ye2024): " + "; ".join(reference.get("claims_ye2024", [])) + ".", ""]
