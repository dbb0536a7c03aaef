"""The layout rules: stages are thin scripts over the memqa library, and dvc.yaml lists every module a stage runs."""
import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGE_FILES = sorted((REPO / "stages").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Top-level and function-local `memqa.*` / `stages.*` imports of one file, as dotted module names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("memqa", "stages"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in ("memqa", "stages")}
    return {m for m in found if module_path(m)}


def module_path(dotted: str) -> Path | None:
    path = REPO.joinpath(*dotted.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def code_closure(path: Path) -> set[str]:
    """The stage file and every memqa module it imports, transitively (package __init__ excluded)."""
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [module_path(m) for m in imported_modules(current)]
    return {str(p.relative_to(REPO)) for p in seen}


def stage_script(cmd: str) -> Path:
    script = next(word for word in cmd.split() if word.startswith("stages/") and word.endswith(".py"))
    return REPO / script


def cmd_code(cmd: str) -> set[str]:
    """Every file of code a dvc.yaml command runs: its stage script and each `python -m memqa.<module>` (the
    params check that precedes it), with everything they import."""
    words = cmd.split()
    modules = [module_path(words[i + 1]) for i, word in enumerate(words[:-1]) if word == "-m"]
    return set().union(*(code_closure(path) for path in [stage_script(cmd), *modules] if path))


def test_every_dvc_stage_depends_on_all_the_code_it_imports():
    missing = {}
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        deps = {str(d) for d in body.get("deps", [])}
        lacking = sorted(cmd_code(body["cmd"]) - deps)
        if lacking:
            missing[name] = lacking
    assert not missing, f"dvc.yaml deps lack imported code: {missing}"


def test_code_closure_sees_function_local_imports(tmp_path, monkeypatch):
    closure = code_closure(REPO / "stages" / "probe.py")
    assert "memqa/models.py" in closure  # imported inside probing.run_probe, not at module level
    assert "memqa/engine.py" in closure and "memqa/config.py" in closure


def test_no_stage_imports_another_stage():
    for path in STAGE_FILES:
        assert not any(m.startswith("stages") for m in imported_modules(path)), path.name


def test_library_never_imports_a_stage():
    for path in (REPO / "memqa").glob("*.py"):
        assert not any(m.startswith("stages") for m in imported_modules(path)), path.name


def test_every_stage_is_a_runnable_script_with_a_click_main():
    for path in STAGE_FILES:
        text = path.read_text()
        assert "@click.command" in text and 'if __name__ == "__main__":\n    main()' in text, path.name
