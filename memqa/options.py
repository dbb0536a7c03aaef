"""Click options shared by the stage commands: each checks its value before any work, as one line."""
from __future__ import annotations

import click

from memqa.config import PARAMS_FILE, check_name


def _model_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_name(value, "--model")
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


class TrainingSize(click.ParamType):
    """A training-set size as split.sizes spells it: a positive whole number, or 'all'."""

    name = "N|all"

    def convert(self, value, param, ctx) -> str:
        text = str(value).strip()
        if text == "all" or (text.isdigit() and int(text) > 0):
            return text
        self.fail(f"{value!r} is not a training-set size: give a positive whole number or 'all'", param, ctx)


model_option = click.option("--model", "model_name", required=True, callback=_model_name,
                            help="A key under `models` in params.yaml.")
params_option = click.option("--params", "params_file", default=PARAMS_FILE, show_default=True,
                             help="The params file.")
SIZE = TrainingSize()
