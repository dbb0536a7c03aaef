"""`memqa check`: params.yaml checked against the schema before DVC reads it.

    memqa check                  # what `make repro` runs before `dvc repro`
    memqa check --params other.yaml

DVC expands the `matrix` and `foreach` of dvc.yaml from params.yaml before any memqa stage runs, so a wrong
type there (`split.sizes: "60"`) fails inside DVC with its own message, and a model name is interpolated into
shell commands. This check runs first and gives memqa's one line naming the key and the fix instead.
"""
from __future__ import annotations

import click

from memqa.config import PARAMS_FILE, load_params
from memqa.distributed import relaunch_command
from memqa.io import read_yaml


@click.command("check")
@click.option("--params", "params_file", default=PARAMS_FILE, show_default=True, help="The params file.")
def command(params_file: str) -> None:
    """Check params.yaml (schema, model names, the report's reference file) and $MEMQA_ACCELERATE."""
    params = load_params(params_file)
    read_yaml(params["report"]["reference"], "set report.reference to memqa/resources/published-results.yaml")
    relaunch_command(["check"])  # splits $MEMQA_ACCELERATE, so an unclosed quote fails here, not mid-pipeline
    split = params["split"]
    cells = len(params["models"]) * len(split["levels"]) * len(split["sizes"]) * len(split["seeds"])
    click.echo(f"{params_file}: ok ({len(params['models'])} model(s), {cells} fine-tuned cells)")
