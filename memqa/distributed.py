"""Several processes under `accelerate launch` (or torchrun): which one this is, relaunching a stage under the
launcher ($MEMQA_ACCELERATE), and splitting work between the processes and gathering it back in order.

Three stages run data parallel: sft (memqa/training.py: one global batch over P processes), probe (shard i of
memqa.probe.shard_plan on process i % P) and evaluate (batch i of the one-process batch plan on process i % P). In
each, every process computes its share on its own device and only the main process writes the stage's outputs;
the result is the one-process result (tested with 2 CPU processes, tests/test_distributed*.py).
"""
from __future__ import annotations

import os
import shlex
import sys
from datetime import timedelta
from typing import Any

from memqa.errors import MemqaError

LAUNCH_ENV = "MEMQA_ACCELERATE"  # e.g. "--config_file configs/accelerate/fsdp.yaml --num_processes 8"
# How long a collective (a barrier, a gather) waits for the slowest process. The probe's barrier waits for the
# other processes' shards, which can take longer than torch's default (NCCL: 10 minutes) when shards are
# unequal; a process that fails ends the whole launch anyway (torchrun stops the others).
TIMEOUT = timedelta(hours=2)
# cuBLAS's deterministic workspace (torch.use_deterministic_algorithms on CUDA needs it, read when cuBLAS starts)
CUBLAS_WORKSPACE = ("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
PORT_OPTION = "--main_process_port"


def deterministic_cuda(deterministic: bool, environ: dict[str, str] | None = None) -> None:
    """Before CUDA starts: set $CUBLAS_WORKSPACE_CONFIG (unless set) for deterministic cuBLAS. Set later it
    would be read too late (torch caches the workspace size), so an initialised CUDA without it is an error."""
    environ = os.environ if environ is None else environ
    name, value = CUBLAS_WORKSPACE
    if not deterministic or name in environ:
        return
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        raise MemqaError(f"sft.deterministic needs {name}={value} before CUDA starts: export it, or set "
                         "-S sft.deterministic=false")
    environ[name] = value


def fsdp_plugin(param_dtype, environ: dict[str, str] | None = None):
    """Under an FSDP launch ($ACCELERATE_USE_FSDP), the launcher's FSDP settings with mixed precision that
    computes in param_dtype but reduces gradients and keeps buffers (RoPE's inv_freq) in fp32, as DDP, one GPU
    and evaluation do (accelerate's default makes all three bf16); None otherwise."""
    import torch

    environ = os.environ if environ is None else environ
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    from accelerate import FullyShardedDataParallelPlugin

    policy = {"param_dtype": param_dtype, "reduce_dtype": torch.float32}
    if environ.get("FSDP_VERSION", "1") == "1":  # FSDP2 keeps buffers as they are loaded (fp32 here)
        policy["buffer_dtype"] = torch.float32
    else:
        policy["output_dtype"] = param_dtype
    return FullyShardedDataParallelPlugin(mixed_precision_policy=policy)


def free_port() -> int:
    """A TCP port free on this machine now, for a launch's rendezvous (side-by-side launches would all take 29500)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_state():
    """This process's place under `accelerate launch` / torchrun (one process, rank 0, otherwise). Without a GPU
    the processes join a gloo group (accelerate's MULTI_CPU), which is how the tests run 2 processes. Under a
    launcher each process's device is its own GPU (`state.device`, `state.local_process_index`)."""
    import torch  # here, so that `memqa check` (the launcher options) does not pay for importing torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=TIMEOUT)


def is_main_process() -> bool:
    return process_state().is_main_process


def relaunch_command(argv: list[str], environ: dict[str, str] | None = None) -> list[str] | None:
    """The `accelerate launch` command that reruns argv (a script and its arguments) on several processes, when
    $MEMQA_ACCELERATE holds launcher options and this process is not already under a launcher; else None.

    DVC runs `python stages/<stage>.py ...`; the launcher options live in the environment, not in dvc.yaml, so
    the same stage runs on 1, 4 or 8 GPUs without changing its command (nor its result). Without
    --main_process_port in the options it takes a free port, so launches side by side do not collide."""
    environ = os.environ if environ is None else environ
    options = environ.get(LAUNCH_ENV, "").strip()
    if not options or "LOCAL_RANK" in environ:
        return None
    try:
        words = shlex.split(options)
    except ValueError as err:  # an unclosed quote
        raise MemqaError(f"${LAUNCH_ENV} cannot be split into options ({err}): fix its quotes, e.g. "
                         f'{LAUNCH_ENV}="--config_file configs/accelerate/ddp.yaml --num_processes 2"') from None
    if not any(w == PORT_OPTION or w.startswith(PORT_OPTION + "=") for w in words):
        words += [PORT_OPTION, str(free_port())]
    return [sys.executable, "-m", "accelerate.commands.launch", *words, *argv]


def relaunch(argv: list[str]) -> int | None:
    """Run relaunch_command(argv) (its processes without $MEMQA_ACCELERATE) and return its exit code; None when
    there is nothing to relaunch."""
    import subprocess

    command = relaunch_command(argv)
    if command is None:
        return None
    return subprocess.call(command, env={k: v for k, v in os.environ.items() if k != LAUNCH_ENV})


def my_share(n: int, state=None) -> list[int]:
    """The indices of n work items (shards, batches) this process takes: i with i % processes == its rank."""
    state = state or process_state()
    return list(range(state.process_index, n, state.num_processes))


def gather_in_order(indexed: list[tuple[int, Any]], state=None) -> list[Any]:
    """Every process's (index, item) pairs, on every process, as one list of items in index order (a collective:
    every process must call it). One process: the items of `indexed`, sorted."""
    state = state or process_state()
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        indexed = [pair for part in gather_object([indexed]) for pair in part]
    return [item for _, item in sorted(indexed, key=lambda pair: pair[0])]
