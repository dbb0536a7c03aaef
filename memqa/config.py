"""params.yaml: one schema per section, checked in full before any stage does work.

Every problem is one line naming the key and the fix: an unknown key (a typo names the key you meant), a
missing key, a wrong type (`split.sizes: "60"`), a value out of range or not among the allowed ones. Stages
get the validated `Params` and pass its typed sections (`params.probe`, `params.split`, ...) to the library;
the allowed values of a knob are written here once (the Literal types below) and read from here.
"""
from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from memqa.errors import MemqaError
from memqa.io import read_yaml
from memqa.overrides import PARAMS_FILE, apply_overrides, preset_overrides
from memqa.param_errors import one_line
from memqa.paths import TEMPLATES_FILE

DTYPE = Literal["bfloat16", "float32", "float16"]
ENGINE = Literal["hf", "vllm"]  # hf: memqa's own decode loop (memqa/engine.py); vllm: vLLM's offline LLM
MATCHER = Literal["contains", "token_sequence"]
PROBE_METHOD = Literal["sample", "likelihood", "greedy_containment", "rao_blackwell"]
SFT_METHOD = Literal["qlora", "lora", "full"]
RELATION_MIX = Literal["matched", "balanced"]  # balanced: each level's own pool, as even over relations as it allows
SHORT_POOL = Literal["use", "skip"]
SYNONYMS = Literal["published", "none"]
TEMPLATE_SET = Literal["published", "authored"]
_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
# A model name becomes a folder (data/models/<name>) and a word of a DVC command: letters, digits, '.', '_', '-'
# only, not starting with '.' or '-' (so no '..', no hidden folder, no option), at most 100 characters.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def check_name(name: str, what: str) -> str:
    """name, if it is safe as a folder name and a shell word; else a ValueError saying what is allowed."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"{what} may hold only letters, digits, '.', '_' and '-' (no '..', not starting with "
                         f"'.' or '-', at most 100 characters): rename {name!r}")
    return name


def _model_name(name: str) -> str:
    return check_name(name, "a model name")


def _yaml_float(value: Any) -> Any:
    """PyYAML reads `1e-5` (no dot) as a string, YAML 1.2 (DVC's `-S`) as a number: accept both spellings."""
    return float(value) if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()) else value


# inf and nan are not numbers a knob can take (`temperature: .inf` once passed)
Float = Annotated[float, BeforeValidator(_yaml_float), Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1)]
ModelName = Annotated[str, AfterValidator(_model_name)]  # checked key by key: the error names the key


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PerRelation(Section):
    train: Annotated[int, Field(ge=0)] | None
    dev: Annotated[int, Field(ge=0)] | None
    test: Annotated[int, Field(ge=0)] | None


class Download(Section):
    source: str
    per_relation: PerRelation
    seed: int = 0
    paper_pools: bool = True  # single-answer facts, one per question text per pool: the paper's 75,944/9,555/11,613


class ModelSpec(Section):
    source: str
    dtype: DTYPE = "bfloat16"
    revision: str | None = None  # Hub models: a branch, tag or commit; the resolved commit is recorded


class Probe(Section):
    method: PROBE_METHOD
    templates: Count
    samples: Count
    temperature: Annotated[Float, Field(ge=0)]
    max_new_tokens: Count
    matcher: MATCHER
    level_bounds: list[Float]
    batch_size: Count
    chunk_size: Count
    seed: int
    dtype: DTYPE = "bfloat16"
    save_completions: bool = False
    crosscheck_facts: Annotated[int, Field(ge=0)] = 0
    rb_samples: Count = 2  # rao_blackwell: samples per template (each gives an unbiased estimate)
    rb_max_new_tokens: Count | None = None  # rao_blackwell: decode samples only this far (None: max_new_tokens)
    # rao_blackwell: sample only templates whose likelihood is >= it
    rb_screen_cut: Annotated[Float, Field(gt=0)] | None = None
    # published: the paper's templates where recovered, memqa's own for the rest (params.yaml's choice);
    # authored: memqa's own (what a params file without the key, and the tests' tiny models, use)
    template_set: TEMPLATE_SET = "authored"
    engine: ENGINE = "hf"  # vllm: method sample through vLLM (memqa/vllm_engine.py); after method (its check)
    tensor_parallel_size: Count = 1  # vllm: GPUs per model replica (1 with engine hf: memqa.vllm_engine.check)
    data_parallel_size: Count = 1  # vllm: model replicas (ditto)

    @property
    def n_levels(self) -> int:
        """Levels the bounds give: 0 (never), one per interval between the bounds, and the top one."""
        return len(self.level_bounds) + 2

    @field_validator("level_bounds")
    @classmethod
    def _sorted_bounds(cls, bounds: list[float]) -> list[float]:
        if not bounds or any(not 0 < b < 1 for b in bounds) or bounds != sorted(set(bounds)):
            raise ValueError("must be strictly increasing numbers between 0 and 1, e.g. [0.25, 0.5, 0.75]")
        return bounds

    @field_validator("templates")
    @classmethod
    def _templates_exist(cls, templates: int) -> int:
        if templates > max_templates():
            raise ValueError(f"the templates file has {max_templates()} per relation")
        return templates

    @field_validator("rb_screen_cut")
    @classmethod
    def _screen_below_resolution(cls, cut: float | None, info: ValidationInfo) -> float | None:
        # a fact whose every template is screened keeps their likelihood, whose mean must then read as level 0
        floor = 1.0 / (info.data.get("templates", 1) * info.data.get("samples", 1))
        if cut is not None and cut > floor:
            raise ValueError(f"{cut} is above level 0's resolution 1/{round(1 / floor)}: a fact it leaves unsampled "
                             f"would not be level 0; use a cut <= {floor:.6f}, or null for no screen")
        return cut

    @field_validator("engine")
    @classmethod
    def _engine_runs_method(cls, engine: str, info: ValidationInfo) -> str:
        if engine == "vllm" and info.data.get("method", "sample") != "sample":
            raise ValueError(f"runs only method sample, not {info.data['method']}: set method: sample or engine: hf")
        return engine


class Split(Section):
    levels: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    sizes: list[Count | Literal["all"]] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    short_pool: SHORT_POOL = "use"
    drop_test_overlap: bool = True  # a training set never holds a question that is also a test question
    relation_mix: RELATION_MIX = "matched"  # matched: every level's sets follow the scarcest level's relation mix


class Sft(Section):
    method: SFT_METHOD
    lr: Annotated[Float, Field(gt=0)]
    lr_full: Annotated[Float, Field(gt=0)]
    epochs: Count
    batch_size: Count
    grad_accum: Count = 1
    warmup_ratio: Annotated[Float, Field(ge=0, le=1)] = 0.0
    weight_decay: Annotated[Float, Field(ge=0)] = 0.0
    max_length: Annotated[int, Field(ge=8)]
    lora_r: Count = 16
    lora_alpha: Count = 32
    lora_dropout: Annotated[Float, Field(ge=0, lt=1)] = 0.05
    compute_dtype: Literal["auto", "bfloat16", "float32", "float16"] = "auto"
    deterministic: bool = True  # torch deterministic algorithms: identical reruns on one machine
    keep_weights: bool = False  # full fine-tuning: keep each cell's weights (False: evaluate, then delete them)
    space_before_eos: bool = True  # train on ' A ' + EOS, as Ye et al. 2025's template (App. A); False: ' A' + EOS
    max_grad_norm: Annotated[Float, Field(gt=0)] | None = 1.0  # gradient clipping (HF Trainer's default); None: off


class Evaluate(Section):
    max_new_tokens: Count
    batch_size: Count
    matcher: MATCHER
    engine: ENGINE = "hf"  # vllm: greedy answers through vLLM (memqa/vllm_engine.py)
    tensor_parallel_size: Count = 1  # vllm: GPUs per model replica (1 with engine hf: memqa.vllm_engine.check)
    data_parallel_size: Count = 1  # vllm: model replicas (ditto)


class Matching(Section):
    synonyms: SYNONYMS = "published"  # gold forms also accepted, in the probe and evaluation alike


class Plot(Section):
    dpi: Count = 120


class Report(Section):
    reference: str
    min_level_facts: Count = 10  # a test level with fewer facts stays out of the headline and the verdicts
    margin: Annotated[Float, Field(ge=0)] = 5.0  # non-inferiority margin of "60 points suffice" (headline points)
    bootstrap_replicates: Annotated[int, Field(ge=100)] = 2000


class Params(Section):
    download: Download
    models: dict[ModelName, ModelSpec] = Field(min_length=1)
    probe: Probe
    split: Split
    sft: Sft
    evaluate: Evaluate
    matching: Matching = Matching()
    plot: Plot = Plot()
    report: Report

    def model(self, name: str) -> ModelSpec:
        """models.<name>; else one line naming the models there are."""
        if name not in self.models:
            raise MemqaError(f"model '{name}' is not under 'models' in {PARAMS_FILE}: one of {', '.join(self.models)}")
        return self.models[name]

    @model_validator(mode="after")
    def _levels_exist(self) -> Params:
        n_levels = self.probe.n_levels
        for level in self.split.levels:
            if level >= n_levels:
                raise ValueError(f"split.levels holds {level}, but probe.level_bounds gives levels 0..{n_levels - 1}")
        return self


@cache
def max_templates() -> int:
    """The fewest templates any relation has in the templates file: the most probe.templates may ask for."""
    return min(len(items) for items in yaml.safe_load(TEMPLATES_FILE.read_text()).values())


def read_reference(path: str | Path) -> dict:
    """The published-results file report.reference names, as a mapping; else one line naming the fix."""
    return read_yaml(path, "set report.reference to the published-results file "
                           "(memqa/resources/published-results.yaml)")


def validate(params: dict[str, Any], path: str | Path = PARAMS_FILE) -> Params:
    """The params, checked against the schema and with defaults filled in; a MemqaError on the first problem."""
    try:
        return Params.model_validate(params)
    except ValidationError as err:
        # an unknown key first: a misspelt required key is also reported missing, and the typo is the cause
        errors = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise MemqaError(one_line(errors[0], Path(path), Params, {"models": ModelSpec})) from None


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """params.yaml as written (a mapping of sections), not yet validated; else one line naming the fix."""
    path = Path(path)
    if not path.is_file():
        raise MemqaError(f"{path} not found: run from the repository root (where dvc.yaml is) or pass --params")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MemqaError(f"{path} is not valid YAML ({str(err).splitlines()[0]}): fix the syntax") from err
    if not isinstance(params, dict):
        raise MemqaError(f"{path} must be a mapping of sections (download, models, probe, ...): fix it")
    return params


def load_params(path: str | Path = PARAMS_FILE, preset: str | Path | None = None,
                sets: tuple[str, ...] = ()) -> Params:
    """params.yaml, then a preset's `-S` overrides, then `sets`, validated: a typo or a wrong type never reaches
    a stage."""
    overrides = [*(preset_overrides(preset) if preset else []), *sets]
    return validate(apply_overrides(read_params(path), overrides), path)


def with_preset(params: Params, preset: str | Path) -> Params:
    """These params as `eval "dvc exp run $(cat PRESET)"` would run them (what the report diffs against the paper's)."""
    return validate(apply_overrides(params.model_dump(), preset_overrides(preset)), preset)
