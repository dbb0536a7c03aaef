"""DVC-style `-S key=value` overrides applied to raw params in memory: a preset file's, then the command line's.

`memqa plan`, the report's "differs from the paper" table and the benchmarks read a preset this way, so each
sees exactly what `eval "dvc exp run $(cat presets/paper.args)"` would run. memqa.config validates the result.
"""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import yaml

from memqa.errors import MemqaError

PARAMS_FILE = "params.yaml"


def preset_overrides(path: str | Path) -> list[str]:
    """The key=value items of a preset file holding `dvc exp run` arguments (`-S key=value ...`)."""
    path = Path(path)
    if not path.is_file():
        raise MemqaError(f"preset {path} not found: name a file in presets/")
    try:
        words = shlex.split(path.read_text(), comments=True)
    except ValueError as err:  # an unclosed quote
        raise MemqaError(f"{path}: {err} (an unclosed quote?): fix the preset") from None
    items = []
    for flag, value in zip(words[::2], words[1::2], strict=False):
        if flag not in ("-S", "--set-param"):
            raise MemqaError(f"{path}: expected `-S key=value` pairs, found '{flag}': fix the preset")
        items.append(value)
    if len(words) % 2:
        raise MemqaError(f"{path}: '{words[-1]}' has no value: fix the preset")
    return items


def _merge(old: Any, new: Any, item: str, strict: bool) -> Any:
    """A dict value merges into the dict it overrides (Hydra's rule); any other value replaces."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    merged = dict(old)
    for key, value in new.items():
        if strict and key not in old:
            raise MemqaError(f"override '{item}': '{key}' is not in the params; add it with +key=value, or "
                             "replace the whole section with -S '~key' -S '+key=value'")
        merged[key] = _merge(old.get(key), value, item, strict) if key in old else value
    return merged


def apply_override(params: dict[str, Any], item: str) -> None:
    """Apply one `dvc exp run -S` item in memory, with the Hydra override grammar DVC uses: `a.b=value`
    overrides an existing key (a dict value merges into it), `+a.b=value` adds a new key, `++a.b=value` adds or
    overrides, `~a.b` deletes. Values are read as YAML."""
    if item.startswith("~"):
        key, sep, text = item[1:], "", ""
        op = "delete"
    else:
        op = "force" if item.startswith("++") else "add" if item.startswith("+") else "set"
        key, sep, text = item.lstrip("+").partition("=")
        if not sep:
            raise MemqaError(f"override '{item}' is not key=value: write e.g. sft.method=full")
    key = key.removeprefix(f"{PARAMS_FILE}:")
    if not key:
        raise MemqaError(f"override '{item}' names no key: write e.g. sft.method=full")
    *parents, leaf = key.split(".")
    node = params
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise MemqaError(f"override '{item}': '{part}' is not a section: fix the key")
    if op == "delete":
        node.pop(leaf, None)
        return
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise MemqaError(f"override '{item}': its value is not YAML ({' '.join(str(err).split())[:120]}): "
                         "quote it, or close its brackets") from None
    if op == "add" and leaf in node:
        raise MemqaError(f"override '{item}': '{key}' exists already; override it without '+' (or with '++')")
    if op == "set" and leaf not in node:
        raise MemqaError(f"override '{item}': '{key}' is not in the params; add it with +{key}=...")
    node[leaf] = _merge(node.get(leaf), value, item, strict=op == "set")


def apply_overrides(params: dict[str, Any], items: list[str]) -> dict[str, Any]:
    """params with every item applied in order (a copy: the input is left as it was)."""
    import copy
    params = copy.deepcopy(params)
    for item in items:
        apply_override(params, item)
    return params
