"""The software a result was made with: resolved package versions, recorded in every stage's metrics."""
from __future__ import annotations

import platform
from functools import cache
from importlib import metadata

# What decides a number memqa prints: the numerics (torch, numpy), the model code and tokenizers, training and
# sharding, the statistics, and the pipeline's own version.
PACKAGES = ("memqa", "torch", "transformers", "tokenizers", "safetensors", "peft", "accelerate", "bitsandbytes",
            "numpy", "scipy", "scikit-learn", "gguf", "pydantic", "dvc")


@cache
def versions() -> dict[str, str | None]:
    """{"python": ..., package: version or None when not installed}, as resolved in this environment."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def with_versions(metrics: dict) -> dict:
    """A stage's metrics with the versions they were made with (ignored by the CI metric check: not numbers)."""
    return {**metrics, "versions": versions()}
