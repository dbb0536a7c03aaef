"""Model files that are not what their names say (garbage weights, a non-GGUF .gguf, broken JSON): each found by
name and reported as one line naming the file and the fix, not the loader's traceback."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from memqa.errors import MemqaError
from memqa.io import sha256_of

# What from_pretrained raises on a model file that is not what its name says: SafetensorError (bad header, cut
# short), ValueError (not GGUF; UnicodeDecodeError and JSONDecodeError from a garbage JSON), OSError (missing,
# unreadable, or a config that is not JSON).
LOAD_ERRORS = (OSError, ValueError, SafetensorError)


def check_gguf(path: Path) -> None:
    """An empty or non-GGUF file fails here by name; the GGUF reader would say 'cannot mmap' or worse."""
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        what = "is empty" if not magic else "is not a GGUF file (it does not start with the GGUF magic bytes)"
        raise MemqaError(f"{path} {what}: download the .gguf again, or point models.<name>.source at a real one")


def safetensors_problem(path: Path) -> str | None:
    """Why path is not a whole safetensors file, or None. Reads only the header: an 8-byte length, that many
    bytes of JSON, then exactly the tensor bytes the JSON describes."""
    size = path.stat().st_size
    if size == 0:
        return "is empty"
    not_safetensors = "is not a safetensors file (no valid header)"
    with path.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if size < 8 or length > size - 8:
            return not_safetensors
        try:
            header = json.loads(handle.read(length))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return not_safetensors
    if 8 + length + end != size:
        return f"is cut short or padded ({size:,} bytes where its header describes {8 + length + end:,})"
    return None


def json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_bytes())
    except UnicodeDecodeError:
        return "is not JSON (not even UTF-8 text)"
    except json.JSONDecodeError as err:
        return f"is not valid JSON ({err.msg} at line {err.lineno})"
    return None


def broken_file(folder: Path) -> str | None:
    """'<file> <why>' for the first weight or JSON file in a model folder that is garbage, else None. The JSON
    files (a tokenizer.json is tens of MB) are parsed whole, so this runs only after a load has failed."""
    for path in sorted(folder.glob("*.safetensors")):
        if problem := safetensors_problem(path):
            return f"{path} {problem}"
    for path in sorted(folder.glob("*.json")):
        if problem := json_problem(path):
            return f"{path} {problem}"
    return None


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def remake_hint(folder: Path) -> str:
    """How to rebuild a model folder the pipeline wrote: data/models/<name> comes from materialize@<name>."""
    folder = Path(folder)
    if folder.parent.name == "models":
        return (f"rebuild it with `dvc repro materialize@{folder.name}` "
                f"(or python stages/materialize.py --model {folder.name})")
    return "run the stage that wrote it again (dvc repro)"


@contextmanager
def readable_model(folder: Path, fix: str) -> Iterator[None]:
    """A garbage file under a from_pretrained call becomes one line naming the file and the fix."""
    try:
        yield
    except LOAD_ERRORS as err:
        what = broken_file(folder) if folder.is_dir() else None
        raise MemqaError(f"{what or f'cannot load the model in {folder} ({first_line(err)})'}: {fix}") from err


def weight_files(folder: Path) -> list[Path]:
    """The files whose bytes are a model folder's weights."""
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    if not files:
        raise MemqaError(f"no weight files (*.safetensors) in {folder}: materialise the model again")
    return files


def weights_sha256(folder: Path) -> str:
    """One digest over a model folder's weight files (name and content), so retrained weights get a new key."""
    digest = hashlib.sha256()
    for path in weight_files(folder):
        digest.update(f"{path.name}\0{sha256_of(path)}\0".encode())
    return digest.hexdigest()
