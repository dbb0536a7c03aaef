"""Stage `materialize`: turn a model source into a local safetensors folder, once.

    python stages/materialize.py --model gemma3-270m     # models.gemma3-270m.source from params.yaml
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from memqa import paths
from memqa.config import load_params
from memqa.environment import with_versions
from memqa.io import write_json
from memqa.models import materialize
from memqa.options import model_option, params_option


@click.command("materialize")
@model_option
@params_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Default: data/models/<model>.")
@click.option("--info", "info_path", type=click.Path(path_type=Path), help="Default: metrics/<model>/model.json.")
def main(model_name: str, params_file: str, out_dir: Path | None, info_path: Path | None) -> None:
    """Materialise models.<MODEL>.source (packaged GGUF, .gguf file, HF folder or Hub id) into a folder.

    A GGUF is dequantised and saved as safetensors + tokenizer, so later stages load in seconds.
    What was materialised (source, sha256, parameter count, dtype) goes to metrics/<model>/model.json.
    """
    out_dir = out_dir or paths.model_dir(model_name)
    info = materialize(load_params(params_file).model(model_name), out_dir)
    write_json(info_path or paths.model_info(model_name), with_versions(info))
    click.echo(f"materialize: {model_name} ({info['parameters']:,} parameters) in {info['wall_s']} s -> {out_dir}")
    click.echo(json.dumps(info["provenance"]))


if __name__ == "__main__":
    main()
