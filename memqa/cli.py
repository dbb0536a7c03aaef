"""The `memqa` console script: one sub-command per pipeline stage (`memqa <stage> --help`).

The stages are scripts in the project's `stages/` folder (what dvc.yaml runs, `python stages/<stage>.py`),
not part of the installed package: they are glue for this project's DVC pipeline, and a top-level package
named `stages` would collide in other environments. This group loads them from `./stages` (run from the
project root) or from the checkout the package was installed from (`pip install -e .`).
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import click

STAGES = ("download", "materialize", "probe", "split", "sft", "evaluate", "summarize", "plot", "report")
# commands of the library itself, not DVC stages (each a module with `command`)
BUILTINS = {"check": "memqa.check", "plan": "memqa.plan"}


def stages_dir() -> Path | None:
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (root / "stages" / "download.py").is_file():
            return root / "stages"
    return None


class LazyGroup(click.Group):
    """Imports a stage only when it runs, so `memqa download` does not pay for importing torch."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        folder = stages_dir()
        return [s for s in STAGES if folder and (folder / f"{s}.py").is_file()] + list(BUILTINS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in BUILTINS:
            return importlib.import_module(BUILTINS[name]).command
        if name not in self.list_commands(ctx):
            return None
        spec = importlib.util.spec_from_file_location(f"memqa_stage_{name}", stages_dir() / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.main


@click.group(cls=LazyGroup)
def main() -> None:
    """memqa: how much SFT data, and which, does a pretrained LLM need for closed-book QA.

    Run from the project root (where dvc.yaml is); each command but `check` and `plan` is a DVC stage of dvc.yaml.
    `memqa check` checks params.yaml before DVC reads it (`make repro` runs it first); `memqa plan` prints what a
    configuration costs (stages, tokens, disk, device-hours) before it runs.
    """
