"""Runs stages/sft.py in a tiny project folder (the working directory), as `accelerate launch` or plain python
starts it, and records every file write, removal and rename this process makes in writes-<rank>.log.

Used by tests/test_distributed.py: python tests/distributed_sft.py --model tiny --level 4 --size 14 --seed 0
"""
from __future__ import annotations

import os
import runpy
import shutil
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
LOG = Path.cwd() / f"writes-{os.environ.get('RANK', '0')}.log"


def record(kind: str, path) -> None:
    with LOG.open("a") as handle:
        handle.write(f"{kind} {os.path.relpath(Path(path).absolute(), Path.cwd())}\n")


def watch() -> None:
    """Wrap the ways the SFT stage writes: memqa.io, shutil.rmtree, Path.rename, save_pretrained, DVCLive."""
    import dvclive
    import transformers

    import memqa.io

    LOG.write_text("")
    atomic_write_text, rmtree, rename = memqa.io.atomic_write_text, shutil.rmtree, Path.rename
    save_model, save_tokenizer = (transformers.PreTrainedModel.save_pretrained,
                                  transformers.PreTrainedTokenizerBase.save_pretrained)
    live_init = dvclive.Live.__init__

    def write(path, text):
        record("write", path)
        atomic_write_text(path, text)

    def remove(path, *args, **kwargs):
        if Path(path).exists():
            record("rmtree", path)
        rmtree(path, *args, **kwargs)

    def move(self, target):
        record("rename", self)
        return rename(self, target)

    def model_save(self, folder, *args, **kwargs):
        record("save_model", folder)
        return save_model(self, folder, *args, **kwargs)

    def tokenizer_save(self, folder, *args, **kwargs):
        record("save_tokenizer", folder)
        return save_tokenizer(self, folder, *args, **kwargs)

    def live(self, *args, **kwargs):
        record("live", kwargs.get("dir", args[0] if args else "dvclive"))
        live_init(self, *args, **kwargs)

    memqa.io.atomic_write_text, shutil.rmtree, Path.rename = write, remove, move
    transformers.PreTrainedModel.save_pretrained = model_save
    transformers.PreTrainedTokenizerBase.save_pretrained = tokenizer_save
    dvclive.Live.__init__ = live


if __name__ == "__main__":
    watch()
    sys.argv = [str(REPO / "stages" / "sft.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
