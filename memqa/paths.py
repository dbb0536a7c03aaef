"""Every file the pipeline reads or writes, relative to the project root, and the grid cell's name.

dvc.yaml spells the same paths out (DVC needs them literally; change both together); tests/test_layout.py rejects
path literals anywhere else in memqa/ and stages/.
"""
from __future__ import annotations

from pathlib import Path

RESOURCES = Path(__file__).parent / "resources"
RELATIONS_FILE = RESOURCES / "relations.yaml"
EQ_MANIFEST = RESOURCES / "eq_sha256.json"
TEMPLATES_FILE = RESOURCES / "probe_templates.yaml"  # memqa's own 21 per relation (probe.template_set: authored)
PUBLISHED_TEMPLATES_FILE = RESOURCES / "probe_templates_published.yaml"  # Ye et al. 2025's, 401 of 504 recovered
PUBLISHED_FILE = RESOURCES / "published-results.yaml"
THROUGHPUT_FILE = RESOURCES / "throughput.yaml"  # memqa plan's rates per device kind
SYNONYM_FILES = {"published": RESOURCES / "synonyms-published.yaml"}  # matching.synonyms -> its table

RAW_DIR = Path("data/raw/entityquestions")
FACTS = Path("data/facts.jsonl")
DOWNLOAD_METRICS = Path("metrics/download.json")
PROBE_CACHE = Path("data/cache/probe")
SCRATCH = Path("data/scratch")
GRID = Path("metrics/grid.csv")
SUMMARY = Path("metrics/summary.json")
PLOTS = Path("plots")
REPORT = Path("REPORT.md")
BENCHMARK_RESULTS = Path("benchmarks/results")  # the estimator crosscheck, which REPORT.md quotes
PREVIOUS_VERDICTS = BENCHMARK_RESULTS / "verdicts-before-issue-20.json"  # the old design's, REPORT.md compares
METRICS = Path("metrics")
VERDICTS = METRICS / "verdicts.json"
PROBE_DATA = Path("data/probe")
EVAL_DATA = Path("data/eval")
PRESETS = Path("presets")
PAPER_PRESET = PRESETS / "paper.args"  # the paper's protocol, the one place it is written as params


def size_label(size) -> str:
    return "all" if size in (None, "all") else str(int(size))


def cell_name(level: int, size, seed: int) -> str:
    """The grid cell's name, shared by split, sft, evaluate and summarize: L<level>-n<size>-s<seed>."""
    return f"L{level}-n{size_label(size)}-s{seed}"


def model_dir(model: str) -> Path:
    return Path("data/models") / model


def model_info(model: str) -> Path:
    return METRICS / model / "model.json"


def scores(model: str) -> Path:
    return PROBE_DATA / model / "scores.jsonl"


def probe_metrics(model: str) -> Path:
    return METRICS / model / "probe.json"


def splits_dir(model: str) -> Path:
    return Path("data/splits") / model


def split_metrics(model: str) -> Path:
    return METRICS / model / "split.json"


def train_set(model: str, cell: str) -> Path:
    return splits_dir(model) / f"train-{cell}.jsonl"


def test_set(model: str, domain: str) -> Path:
    return splits_dir(model) / f"test_{domain}.jsonl"


def sft_dir(model: str, cell: str) -> Path:
    return Path("data/sft") / model / cell


def sft_metrics(model: str, cell: str) -> Path:
    return METRICS / "sft" / model / f"{cell}.json"


def sft_log(model: str, cell: str) -> Path:
    return METRICS / "sft" / model / f"{cell}.csv"


def sft_live(model: str, cell: str) -> Path:
    """DVCLive's folder of the cell: metrics.json (last step) and plots/metrics/{loss,lr}.tsv per step."""
    return METRICS / "sft" / model / f"{cell}-live"


def sft_scratch(model: str, cell: str) -> Path:
    """Full weights of a cell under sft.keep_weights false: not DVC-tracked, deleted once evaluated."""
    return SCRATCH / "sft" / model / cell


def dvc_stage(stage: str, model: str, cell: str) -> str:
    """dvc.yaml's name of a grid stage instance, e.g. sft@gemma3-270m-4-60-0 for cell L4-n60-s0."""
    level, size, seed = cell[1:].split("-n", 1)[0], *cell.split("-n", 1)[1].rsplit("-s", 1)
    return f"{stage}@{model}-{level}-{size}-{seed}"


def predictions(model: str, cell: str) -> Path:
    """cell 'base' is the untrained model."""
    return EVAL_DATA / model / f"{cell}.jsonl"


def eval_metrics(model: str, cell: str) -> Path:
    return METRICS / "eval" / model / f"{cell}.json"
