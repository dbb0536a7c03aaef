"""The GPU path, tested on the CPU where a test can exist: the CPU suite hides CUDA, the CUDA sampler's noise,
the fused AdamW, FSDP's fp32 reduction and buffers, deterministic cuBLAS before CUDA starts; and, under the `gpu`
marker (`pytest -m gpu`, skipped without CUDA), the same on a GPU (benchmarks/gpu_check.py measures the rest)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from memqa import decoding, distributed, training
from memqa.config import Sft
from memqa.decoding import hashed_uniform, row_key
from memqa.errors import MemqaError
from tests.conftest import cuda_for_tests

REPO = Path(__file__).resolve().parents[1]
SFT = Sft(method="full", lr=1e-3, lr_full=1e-3, epochs=1, batch_size=2, max_length=32, compute_dtype="float32")


def test_the_cpu_suite_hides_cuda_from_its_tests_and_their_subprocesses():
    assert cuda_for_tests("gpu") and cuda_for_tests("gpu and not slow")
    assert not cuda_for_tests("") and not cuda_for_tests("not slow") and not cuda_for_tests("not gpu")
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""  # this run selects no gpu tests
    child = subprocess.run([sys.executable, "-c", "import os, torch; print(repr(os.environ['CUDA_VISIBLE_DEVICES']),"
                            " torch.cuda.device_count())"], capture_output=True, text=True, check=True)
    assert child.stdout.split() == ["''", "0"]


def test_device_noise_is_splitmix64_bit_for_bit_and_independent_of_the_batch(monkeypatch):
    """The CUDA sampler's noise (hashed_uniform: int64 tensor arithmetic) equals 64-bit splitmix64 computed in
    Python, row by row, alone or in a batch, in one draw or in chunks."""
    keys, cpu = [row_key(2, p, s) for p in range(4) for s in range(3)], torch.device("cpu")
    uniform = hashed_uniform(keys, 7, 40, cpu)
    for k in (0, 5, 11):
        state = decoding._mix64(keys[k] ^ decoding._mix64(7))
        expected = [(decoding._mix64((state + v * decoding._GAMMA) & decoding._MASK64) >> 40) * 2.0 ** -24
                    for v in range(40)]
        assert uniform[k].double().tolist() == expected
        assert torch.equal(hashed_uniform(keys[k:k + 1], 7, 40, cpu)[0], uniform[k])
    monkeypatch.setattr(decoding, "_CHUNK", 80)  # two rows per draw
    assert torch.equal(hashed_uniform(keys, 7, 40, cpu), uniform)
    assert not torch.equal(hashed_uniform(keys, 8, 40, cpu), uniform)


def test_gumbel_max_over_device_noise_samples_the_tempered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5])
    n = 20000
    noise = -torch.log(-torch.log(hashed_uniform([row_key(1, i, 0) for i in range(n)], 0, 6, torch.device("cpu"))))
    freq = torch.bincount((logits / 0.7 + noise).argmax(-1), minlength=6).double() / n
    expected = torch.softmax(logits.double() / 0.7, -1)
    assert freq[4] == 0
    assert torch.all((freq - expected).abs() <= 4 * (expected * (1 - expected) / n).sqrt() + 1e-9), (freq, expected)


def test_adamw_is_fused_on_cuda_and_torchs_default_on_cpu():
    """The foreach AdamW (torch's CUDA default) allocates another full-size buffer per step; the fused one does
    not. On CPU the optimizer stays as it was (the CI metric baseline was trained with it)."""
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert training.adamw(params, 1e-3, 0.0, torch.device("cuda")).defaults["fused"] is True
    cpu = training.adamw(params, 1e-3, 0.0, torch.device("cpu")).defaults
    assert cpu["fused"] is None and cpu["foreach"] is None
    assert cpu == torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0).defaults


def launch_environment(config: str, processes: int = 2) -> dict[str, str]:
    """The environment `accelerate launch --config_file <config>` gives its processes (its FSDP/ACCELERATE part)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", config, "--num_processes", str(processes), "x.py"])
    env = prepare_multi_gpu_env(_validate_launch_command(args)[0])
    return {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_"))}


def test_fsdp_reduces_gradients_and_keeps_buffers_in_fp32(monkeypatch):
    """Under configs/accelerate/fsdp.yaml accelerate's own plugin makes parameters, gradient reduction and buffers
    bf16 (RoPE's inv_freq bf16 under FSDP, fp32 in DDP, one GPU and evaluation); the plugin memqa passes computes
    in bf16 but reduces and keeps buffers in fp32, also after accelerate applies mixed_precision bf16."""
    from accelerate import FullyShardedDataParallelPlugin

    for name, value in launch_environment(str(REPO / "configs" / "accelerate" / "fsdp.yaml")).items():
        monkeypatch.setenv(name, value)
    default = FullyShardedDataParallelPlugin()
    default.set_mixed_precision("bf16")
    assert (default.mixed_precision_policy.reduce_dtype, default.mixed_precision_policy.buffer_dtype) == \
        (torch.bfloat16, torch.bfloat16)
    ours = distributed.fsdp_plugin(torch.bfloat16)
    ours.set_mixed_precision("bf16")
    policy = ours.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype, policy.buffer_dtype) == (torch.bfloat16, torch.float32,
                                                                             torch.float32)
    with mock.patch("accelerate.Accelerator") as accelerator:  # and SFT hands it to the Accelerator
        training._accelerator(SFT.model_copy(update={"compute_dtype": "bfloat16"}))
    assert accelerator.call_args.kwargs["fsdp_plugin"].mixed_precision_policy.reduce_dtype == torch.float32
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert distributed.fsdp_plugin(torch.bfloat16) is None


def test_deterministic_sft_sets_the_cublas_workspace_before_anything_starts_cuda(monkeypatch, tmp_path):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = {}

    def process_state():  # the first thing in fine_tune that can start CUDA
        seen["cublas"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "process_state", process_state)
    with pytest.raises(KeyboardInterrupt):
        training.fine_tune([], SFT, 0, tmp_path / "model", tmp_path / "out", tmp_path / "log.csv")
    assert seen == {"cublas": ":4096:8"}
    env = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    distributed.deterministic_cuda(True, env)
    assert env == {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}  # one set by the user stays
    env = {}
    distributed.deterministic_cuda(False, env)
    assert env == {}
    with mock.patch("torch.cuda.is_available", return_value=True), \
            mock.patch("torch.cuda.is_initialized", return_value=True), \
            pytest.raises(MemqaError, match="CUBLAS_WORKSPACE_CONFIG=:4096:8 before CUDA starts"):
        distributed.deterministic_cuda(True, {})


def test_deterministic_cuda_training_does_not_nan_fill_every_empty_tensor():
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        training.determinism(True, cuda=False)
        assert torch.are_deterministic_algorithms_enabled() and torch.utils.deterministic.fill_uninitialized_memory
        training.determinism(True, cuda=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.utils.deterministic.fill_uninitialized_memory
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = fill


# --- on a GPU (`pytest -m gpu`) -----------------------------------------------------------------------------------

@pytest.mark.gpu
def test_cuda_noise_is_the_cpu_reference_bit_for_bit():
    keys = [row_key(5, p, s) for p in range(300) for s in range(2)]
    cuda = hashed_uniform(keys, 3, 128256, torch.device("cuda"))
    assert torch.equal(cuda.cpu(), hashed_uniform(keys, 3, 128256, torch.device("cpu")))
    assert torch.equal(decoding.gumbel_noise(keys[7:8], 3, 128256, torch.device("cuda"))[0], -torch.log(
        -torch.log(cuda[7])))


@pytest.mark.gpu
def test_cuda_engine_decodes_rows_as_alone_and_samples_independently_of_the_batch():
    """fp32 on CUDA: greedy rows batched = alone = HF generate, sampled rows the same in batches of 64, 8 and 1
    (at least 95% of rows: batch shape still moves the last bits of the logits); the noise bit for bit."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_check_parts import engine_check

    result = engine_check(torch.device("cuda"), smoke=False)
    assert result["ok"], result


@pytest.mark.gpu
def test_gpu_check_fine_tunes_on_one_gpu_and_under_fsdp_with_fp32_buffers(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(out), "--only",
                    "sft_one_gpu,sft_fsdp"], check=True, timeout=900, env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
    checks = json.loads(out.read_text())["checks"]
    for name in ("sft_one_gpu", "sft_fsdp"):
        assert checks[name]["ok"], checks[name]
        assert checks[name]["saved_dtype"] == "bfloat16" and checks[name]["inv_freq_dtype"] == "torch.float32"
