"""Stage `download`: fetch EntityQuestions, verify every file, write the facts table.

    python stages/download.py                 # source from params.yaml, or $MEMQA_EQ_SOURCE when set
    MEMQA_EQ_SOURCE=../shared/data/entityquestions memqa download
"""
from __future__ import annotations

import os
from pathlib import Path

import click

from memqa import eq, paths
from memqa.config import load_params
from memqa.environment import with_versions
from memqa.io import json_text, jsonl_text, write_all
from memqa.options import params_option


@click.command("download")
@params_option
@click.option("--raw-dir", default=str(paths.RAW_DIR), show_default=True, type=click.Path(path_type=Path))
@click.option("--out", "facts_path", default=str(paths.FACTS), show_default=True, type=click.Path(path_type=Path))
@click.option("--meta", "meta_path", default=str(paths.DOWNLOAD_METRICS), show_default=True,
              type=click.Path(path_type=Path))
def main(params_file: str, raw_dir: Path, facts_path: Path, meta_path: Path) -> None:
    """Fetch and verify EntityQuestions (24 relations x train/dev/test) and write the facts table.

    The source is download.source (official zip URL, a zip file or a directory); the environment
    variable MEMQA_EQ_SOURCE overrides it, for offline machines. Every file is checked against the
    shipped sha256 manifest; subsampling (download.per_relation, download.seed) is deterministic.
    """
    rows, meta = eq.download(load_params(params_file).download, raw_dir, os.environ.get(eq.SOURCE_ENV))
    write_all({facts_path: jsonl_text(rows), meta_path: json_text(with_versions(meta))})
    click.echo(f"download: {meta['facts']} facts from {meta['files_verified']} verified files "
               f"in {meta['wall_s']} s -> {facts_path}")


if __name__ == "__main__":
    main()
