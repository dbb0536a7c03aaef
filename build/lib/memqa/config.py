"""params.yaml: loading, with typo detection (an unknown key names the key you meant)."""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from memqa.errors import MemqaError

PARAMS_FILE = "params.yaml"

# The knobs each section may hold. Values live in params.yaml only; this is for catching typos.
KNOWN_KEYS: dict[str, set[str]] = {
    "download": {"source", "per_relation", "seed"},
    "models": set(),  # free-form: model name -> {source, dtype}
    "probe": {"method", "templates", "samples", "temperature", "max_new_tokens", "matcher",
              "level_bounds", "batch_size", "seed", "chunk_size", "save_completions", "crosscheck_facts",
              "dtype"},
    "split": {"levels", "sizes", "seeds", "short_pool"},
    "sft": {"method", "lr", "lr_full", "epochs", "batch_size", "grad_accum", "warmup_ratio", "weight_decay",
            "max_length", "lora_r", "lora_alpha", "lora_dropout", "compute_dtype"},
    "evaluate": {"max_new_tokens", "batch_size", "matcher"},
    "plot": {"dpi"},
    "report": {"reference"},
}
MODEL_KEYS = {"source", "dtype", "file"}


def _check_keys(found: dict, allowed: set[str], where: str) -> None:
    for key in found:
        if key not in allowed:
            hint = difflib.get_close_matches(key, sorted(allowed), n=1)
            fix = f"did you mean '{hint[0]}'?" if hint else f"allowed: {', '.join(sorted(allowed))}"
            raise MemqaError(f"unknown key '{where}{key}' in {PARAMS_FILE}: {fix}")


def load_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Load params.yaml and reject unknown keys, so a typo never silently falls back to a default."""
    path = Path(path)
    if not path.is_file():
        raise MemqaError(f"{path} not found: run from the repository root (where dvc.yaml is)")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MemqaError(f"{path} is not valid YAML ({str(err).splitlines()[0]}): fix the syntax") from err
    _check_keys(params, set(KNOWN_KEYS), "")
    for section, allowed in KNOWN_KEYS.items():
        if section == "models":
            for name, spec in (params.get("models") or {}).items():
                _check_keys(spec or {}, MODEL_KEYS, f"models.{name}.")
        elif isinstance(params.get(section), dict):
            _check_keys(params[section], allowed, f"{section}.")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in params:
        raise MemqaError(f"{PARAMS_FILE} has no '{name}' section: add it (see the README's params table)")
    return params[name]


def require(conf: dict[str, Any], key: str, where: str) -> Any:
    if key not in conf:
        raise MemqaError(f"{PARAMS_FILE} lacks '{where}.{key}': add it")
    return conf[key]


def model_spec(params: dict[str, Any], name: str) -> dict[str, Any]:
    models = section(params, "models")
    if name not in models:
        raise MemqaError(f"model '{name}' is not under 'models' in {PARAMS_FILE}: one of {', '.join(models)}")
    return models[name]
