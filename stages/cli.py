"""The `memqa` console script: one sub-command per pipeline stage (`memqa <stage> --help`)."""
from __future__ import annotations

import importlib

import click

STAGES = ("download", "materialize", "probe", "split", "sft", "evaluate", "summarize", "plot", "report")


class LazyGroup(click.Group):
    """Imports a stage only when it runs, so `memqa download` does not pay for importing torch."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [s for s in STAGES if importlib.util.find_spec(f"stages.{s}")]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.list_commands(ctx):
            return None
        return importlib.import_module(f"stages.{name}").main


@click.group(cls=LazyGroup)
def main() -> None:
    """memqa: how much SFT data, and which, does a pretrained LLM need for closed-book QA."""
