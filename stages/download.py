"""Stage `download`: fetch EntityQuestions, verify every file, write the facts table.

    memqa download                      # source from params.yaml, or $MEMQA_EQ_SOURCE when set
    MEMQA_EQ_SOURCE=../shared/data/entityquestions memqa download
"""
from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import click

from stages import data
from stages.params import MemqaError, load_params, params_option, require, section, write_json, write_jsonl


def run_download(source: str, per_relation: dict, seed: int, raw_dir: Path, facts_path: Path,
                 meta_path: Path) -> dict:
    for split in per_relation:
        if split not in data.SPLITS:
            raise MemqaError(f"download.per_relation has unknown split '{split}': use {', '.join(data.SPLITS)}")
    started = time.time()
    data.fetch(source, raw_dir)
    rows = data.build_facts(raw_dir, per_relation, seed)
    counts = Counter((r["split"], r["domain"]) for r in rows)
    meta = {
        "source": source,
        "files_verified": len(data.expected_sha256()),
        "subsample": {"per_relation": per_relation, "seed": seed},
        "facts": len(rows),
        "facts_by_split_domain": {f"{s}/{d}": n for (s, d), n in sorted(counts.items())},
        "wall_s": round(time.time() - started, 2),
    }
    write_jsonl(facts_path, rows)
    write_json(meta_path, meta)
    return meta


@click.command("download")
@params_option
@click.option("--raw-dir", default="data/raw/entityquestions", show_default=True, type=click.Path(path_type=Path))
@click.option("--out", "facts_path", default="data/facts.jsonl", show_default=True, type=click.Path(path_type=Path))
@click.option("--meta", "meta_path", default="metrics/download.json", show_default=True,
              type=click.Path(path_type=Path))
def main(params_file: str, raw_dir: Path, facts_path: Path, meta_path: Path) -> None:
    """Fetch and verify EntityQuestions (24 relations x train/dev/test) and write the facts table.

    The source is download.source (official zip URL, a zip file or a directory); the environment
    variable MEMQA_EQ_SOURCE overrides it, for offline machines. Every file is checked against the
    shipped sha256 manifest; subsampling (download.per_relation, download.seed) is deterministic.
    """
    conf = section(load_params(params_file), "download")
    source = os.environ.get(data.SOURCE_ENV) or require(conf, "source", "download")
    meta = run_download(source, require(conf, "per_relation", "download"), int(conf.get("seed", 0)),
                        raw_dir, facts_path, meta_path)
    click.echo(f"download: {meta['facts']} facts from {meta['files_verified']} verified files "
               f"in {meta['wall_s']} s -> {facts_path}")
