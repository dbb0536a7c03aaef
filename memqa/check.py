"""`memqa check`: params.yaml checked against the schema before DVC, or a shell, uses it.

    memqa check                  # what `make repro` runs before `dvc repro`
    python -m memqa.check -q     # what every dvc.yaml command that holds a params value runs first

DVC expands the `matrix` and `foreach` of dvc.yaml from params.yaml before any memqa stage runs, so a wrong
type there (`split.sizes: "60"`) fails inside DVC with its own message; run first, this check gives memqa's
one line naming the key and the fix instead. DVC also pastes params values (model names, levels, sizes, seeds)
into shell commands: dvc.yaml single-quotes them, and each such command begins with
`python -m memqa.check -q || exit 1;`, so a value that could break out of its quotes stops the shell before the
command holding it is run.
"""
from __future__ import annotations

import click

from memqa.config import PARAMS_FILE, load_params, read_reference
from memqa.distributed import relaunch_command


@click.command("check")
@click.option("--params", "params_file", default=PARAMS_FILE, show_default=True, help="The params file.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when the params are fine.")
def command(params_file: str, quiet: bool) -> None:
    """Check params.yaml (schema, model names, the report's reference file) and $MEMQA_ACCELERATE."""
    params = load_params(params_file)
    read_reference(params.report.reference)
    relaunch_command(["check"])  # splits $MEMQA_ACCELERATE, so an unclosed quote fails here, not mid-pipeline
    split = params.split
    cells = len(params.models) * len(split.levels) * len(split.sizes) * len(split.seeds)
    if not quiet:
        click.echo(f"{params_file}: ok ({len(params.models)} model(s), {cells} fine-tuned cells)")


if __name__ == "__main__":
    command()
