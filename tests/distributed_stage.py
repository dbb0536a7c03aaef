"""Runs stages/<stage>.py in a tiny project folder (the working directory), as `accelerate launch` or plain python
starts it, and records every file write, removal and rename this process makes in writes-<rank>.log
(writes-outer.log for a process outside a launcher when $MEMQA_ACCELERATE makes it relaunch itself).

With $MEMQA_ACCELERATE the stage relaunches itself under `accelerate launch` (memqa.distributed.relaunch); the
relaunched processes run this helper again, so their writes are recorded too.

Used by tests/test_distributed_inference.py: python tests/distributed_stage.py probe --model tiny
"""
from __future__ import annotations

import os
import runpy
import shutil
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
HELPER = Path(__file__).resolve()
REPO = HELPER.parents[1]
sys.path.insert(0, str(REPO))
RANK = os.environ.get("RANK")
LOG = Path.cwd() / f"writes-{RANK if RANK is not None else 'outer'}.log"


def record(kind: str, path) -> None:
    with LOG.open("a") as handle:
        handle.write(f"{kind} {os.path.relpath(Path(path).absolute(), Path.cwd())}\n")


def watch(stage: str) -> None:
    """Wrap the ways an inference stage writes (memqa.io, shutil.rmtree, Path.rename), and make a relaunch under
    `accelerate launch` start this helper rather than the bare stage."""
    import memqa.distributed
    import memqa.io

    LOG.write_text("")
    write_all, rmtree, rename = memqa.io.write_all, shutil.rmtree, Path.rename
    relaunch = memqa.distributed.relaunch

    def write(files):
        for path in files:
            record("write", path)
        write_all(files)

    def remove(path, *args, **kwargs):
        if Path(path).exists():
            record("rmtree", path)
        rmtree(path, *args, **kwargs)

    def move(self, target):
        record("rename", self)
        return rename(self, target)

    memqa.io.write_all, shutil.rmtree, Path.rename = write, remove, move
    memqa.distributed.relaunch = lambda argv: relaunch([str(HELPER), stage, *argv[1:]])


if __name__ == "__main__":
    stage, arguments = sys.argv[1], sys.argv[2:]
    watch(stage)
    sys.argv = [str(REPO / "stages" / f"{stage}.py"), *arguments]
    runpy.run_path(sys.argv[0], run_name="__main__")
