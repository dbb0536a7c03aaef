"""Click options shared by the stage commands."""
from __future__ import annotations

import click

from memqa.config import PARAMS_FILE

model_option = click.option("--model", "model_name", required=True, help="A key under `models` in params.yaml.")
params_option = click.option("--params", "params_file", default=PARAMS_FILE, show_default=True,
                             help="The params file.")
