"""Every way a model is loaded: materialisation of a source (memqa.model_sources resolves it), the frozen
inference model (probe), and the base as an SFT method trains and evaluates it."""
from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import get_args

import torch

from memqa.config import DTYPE, SFT_METHOD, ModelSpec, Sft
from memqa.errors import MemqaError
from memqa.io import sha256_of
from memqa.model_files import (
    LOAD_ERRORS,
    broken_file,
    first_line,
    readable_model,
    remake_hint,
    weights_sha256,
)
from memqa.model_sources import gguf_parsed_once, resolve_source

# Stamped by save_pretrained into these files: the installed version, not the model, so two clones with
# different transformers releases would otherwise write different bytes (and DVC hashes) for the same weights.
VERSION_STAMPED = ("config.json", "generation_config.json")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a params dtype name (memqa.config.DTYPE lists them)."""
    if name not in get_args(DTYPE):
        raise MemqaError(f"unknown dtype '{name}': use one of {', '.join(get_args(DTYPE))}")
    return getattr(torch, name)


def _load_source(source: str, location: str, gguf_file: str | None, provenance: dict, dtype: str,
                 revision: str | None):
    """(tokenizer, model) from a resolved source; a Hub miss or a garbage file is one clear line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {"gguf_file": gguf_file} if gguf_file else {}
    if revision and provenance["kind"] == "hub":
        kwargs["revision"] = revision
    try:
        with gguf_parsed_once() if gguf_file else nullcontext():
            tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype(dtype), **kwargs)
    except LOAD_ERRORS as err:
        if provenance["kind"] == "hub" and isinstance(err, OSError):
            raise MemqaError(f"cannot fetch '{source}' from the Hugging Face Hub ({first_line(err)})"
                             ": offline, use a local folder or a packaged GGUF as models.<name>.source") from err
        raise _unloadable(source, location, gguf_file, provenance, err) from err
    return tokenizer, model


def _unloadable(source: str, location: str, gguf_file: str | None, provenance: dict, err: BaseException):
    """The one line for a source whose files the loader rejects: which file, why, and what to do."""
    if gguf_file:
        return MemqaError(f"{Path(location) / gguf_file} is not a readable GGUF file ({first_line(err)}): "
                          "download the .gguf again, then rerun materialize")
    # Only a model folder is ours to diagnose file by file.
    broken = broken_file(Path(location)) if provenance["kind"] == "local-dir" else None
    if broken:
        return MemqaError(f"{broken}: replace it with the model's real file (copy the folder or save_pretrained "
                          "it again), then rerun materialize")
    return MemqaError(f"cannot load model from {source} ({first_line(err)}): check the source, then rerun "
                      "materialize")


def drop_version_stamps(folder: Path) -> None:
    """Remove transformers_version from the saved configs, so the folder's bytes depend on the model only."""
    for name in VERSION_STAMPED:
        path = folder / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text(encoding="utf-8"))
        if config.pop("transformers_version", None) is not None:
            # The layout save_pretrained writes, so nothing but the stamp changes.
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def materialize(spec: ModelSpec, out_dir: Path) -> dict:
    """Convert spec.source once into a plain safetensors + tokenizer folder (spec.dtype) later stages load fast.

    The same source gives the same bytes in any clone, folder or transformers release that converts it
    alike: no timing, path or library version is written into the folder (the stage's metrics record those)."""
    started = time.time()
    source, dtype, revision = spec.source, spec.dtype, spec.revision
    with tempfile.TemporaryDirectory() as tmp:
        location, gguf_file, provenance = resolve_source(source, Path(tmp))
        tokenizer, model = _load_source(source, location, gguf_file, provenance, dtype, revision)
        if gguf_file:
            # A GGUF-loaded model is marked quantized and refuses save/train; its weights are already
            # dequantized, so dropping the marker yields an ordinary model.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            provenance["sha256"] = sha256_of(Path(location) / gguf_file)
        if provenance["kind"] == "hub":
            provenance["revision"] = revision
            provenance["commit"] = getattr(model.config, "_commit_hash", None)  # what `revision` resolved to
        staging = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    drop_version_stamps(staging)
    info = {
        "source": source,
        "provenance": provenance,
        "architecture": model.config.architectures[0] if model.config.architectures else type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": dtype,
        "vocab_size": model.config.vocab_size,
        "weights_sha256": weights_sha256(staging),
    }
    # DVC hashes the folder: a byte that differs between runs would rerun every downstream stage.
    (staging / "memqa_model.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return {**info, "wall_s": round(time.time() - started, 1)}


def choose_pad_token(tokenizer) -> None:
    """Left padding with a pad token that is not EOS where the vocabulary has one (see offline-stack.md)."""
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    for candidate in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id):
        if candidate is not None and candidate != eos:
            tokenizer.pad_token_id = candidate
            return
    tokenizer.pad_token_id = eos


def contiguous_lm_head(model) -> None:
    """torch 2.13 CPU: a non-contiguous [B,1,H] input to lm_head is 25-30x slower on frozen bf16 models."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    with readable_model(model_dir, remake_hint(model_dir)):
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    choose_pad_token(tokenizer)
    return tokenizer


def load_model(model_dir: str | Path, dtype: str = "bfloat16", on: torch.device | None = None):
    """A materialised model for inference: eval mode, frozen, on `on` (default: the GPU when there is one; under
    `accelerate launch`, this process's device, memqa.distributed.process_state().device)."""
    from transformers import AutoModelForCausalLM

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise MemqaError(f"no materialised model at {model_dir}: {remake_hint(model_dir)}")
    with readable_model(model_dir, remake_hint(model_dir)):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype(dtype))
    model = model.to(on or device())
    model.eval().requires_grad_(False)
    contiguous_lm_head(model)
    return model, load_tokenizer(model_dir)


def compute_dtype(conf: Sft) -> torch.dtype:
    """The dtype the forward pass runs in (`auto`): bf16 on CUDA, fp32 on CPU.

    auto keeps fp32 on CPU, where bf16 is fast only with native bf16 instructions; params.yaml sets bfloat16,
    measured faster on this CPU (benchmarks/README.md, "Precision").

    Full fine-tuning keeps fp32 master weights whatever this is (AdamW at lr 1e-5 on bf16 weights rounds
    most updates away); a bf16 compute dtype then means bf16 autocast.
    """
    if conf.compute_dtype != "auto":
        return torch_dtype(conf.compute_dtype)
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def precision(conf: Sft, method: str, training: bool) -> str:
    """A readable account of the weights and compute dtypes `method` runs in, for the metrics and REPORT.md."""
    compute = str(compute_dtype(conf)).removeprefix("torch.")
    if method == "qlora":
        return f"NF4 base weights, {compute} compute"
    if method == "full" and training:
        return "fp32 master weights" + ("" if compute == "float32" else f", {compute} autocast")
    return f"{compute} weights"


def device_map(local_rank: int) -> dict[str, int | str]:
    """Pinned to this process's device: never `auto` with 4-bit weights (it would shard across GPUs)."""
    return {"": local_rank if torch.cuda.is_available() else "cpu"}


def load_base(model_dir: Path, method: str, conf: Sft, local_rank: int = 0, training: bool = False):
    """The base model as `method` runs it: NF4-quantised for qlora, fp32 master weights for full fine-tuning
    when training, else plain weights in the compute dtype."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if method not in get_args(SFT_METHOD):
        raise MemqaError(f"unknown sft.method '{method}': use one of {', '.join(get_args(SFT_METHOD))}")
    if not (Path(model_dir) / "config.json").is_file():
        raise MemqaError(f"no model at {model_dir}: run `dvc repro materialize` (or sft) first")
    dtype = compute_dtype(conf)
    weights = torch.float32 if method == "full" and training else dtype
    kwargs: dict = {"dtype": weights, "device_map": device_map(local_rank)}
    if method == "qlora":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise MemqaError("sft.method qlora needs bitsandbytes: pip install bitsandbytes (or use lora)")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
    with readable_model(Path(model_dir), remake_hint(Path(model_dir))):
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    return model, load_tokenizer(model_dir)


def load_for_eval(model_dir: Path, trained_dir: Path | None, method: str, conf: Sft, local_rank: int = 0):
    """For evaluation: adapters unmerged on the base in its training precision, full weights as saved, or
    (trained_dir None) the untrained base in the same precision, the 0-data baseline; on GPU local_rank."""
    if trained_dir is not None and method == "full":
        model, tokenizer = load_base(trained_dir, method, conf, local_rank)
    else:
        model, tokenizer = load_base(model_dir, method, conf, local_rank)
        if trained_dir is not None:
            from peft import PeftModel

            fix = f"retrain the cell (dvc repro --force sft@<model>-<level>-<size>-<seed> for {trained_dir.name})"
            with readable_model(Path(trained_dir), fix):
                model = PeftModel.from_pretrained(model, str(trained_dir))
    model.eval().requires_grad_(False)
    contiguous_lm_head(model)
    return model, tokenizer
