"""One line per params problem: pydantic's first error, turned into the key, what is wrong and the fix."""
from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

# pydantic appends the union member it tried ('constrained-int', "literal['all']"): not a params key
_UNION_TAG = re.compile(r"constrained-\w+|literal\[.*\]|function-\w+\[.*\]|int|float|str|bool|none|\[key\]")


def _allowed_keys(loc: tuple, root: type[BaseModel], mapped: dict[str, type[BaseModel]]) -> list[str]:
    """The keys the section at loc allows; `mapped` names the sections whose keys are free names (models)."""
    schema: Any = root
    for part in loc[:-1]:
        if schema is root and part in mapped:
            schema = mapped[part]
            continue
        field = getattr(schema, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            continue
        schema = field.annotation
    return sorted(getattr(schema, "model_fields", {}))


def one_line(error: dict, path: Path, root: type[BaseModel], mapped: dict[str, type[BaseModel]]) -> str:
    """A pydantic error of the params file at path as one line naming the key and the fix."""
    where = ".".join(str(part) for part in error["loc"] if not _UNION_TAG.fullmatch(str(part)))
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(tuple(error["loc"]), root, mapped)
        hint = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        fix = f"did you mean '{hint[0]}'?" if hint else f"allowed: {', '.join(allowed)}"
        return f"unknown key '{where}' in {path}: {fix}"
    if error["type"] == "missing":
        return f"{path} lacks '{where}': add it (see docs/development.md, 'Params reference')"
    message = error["msg"].removeprefix("Value error, ")
    if error["loc"]:
        return f"{path}: '{where}' = {error.get('input')!r} is invalid ({message}): fix it"
    return f"{path}: {message}: fix it"
