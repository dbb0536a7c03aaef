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
    """The file of a dotted module: a module's .py, or a package's __init__.py (its code runs on import too)."""
    base = REPO.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def code_closure(path: Path) -> set[str]:
    """The stage file and every memqa module it imports, transitively, package __init__ files included."""
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
    assert "memqa/models.py" in closure  # imported inside memqa.probe.run.run_probe, not at module level
    assert "memqa/engine.py" in closure and "memqa/config.py" in closure


def test_no_stage_imports_another_stage():
    for path in STAGE_FILES:
        assert not any(m.startswith("stages") for m in imported_modules(path)), path.name


def test_library_never_imports_a_stage():
    for path in (REPO / "memqa").rglob("*.py"):
        assert not any(m.startswith("stages") for m in imported_modules(path)), path.name


def test_every_stage_is_a_runnable_script_with_a_click_main():
    for path in STAGE_FILES:
        text = path.read_text()
        assert "@click.command" in text and 'if __name__ == "__main__":\n    main()' in text, path.name


LIBRARY_AND_STAGES = sorted([*(REPO / "memqa").rglob("*.py"), *STAGE_FILES])


def _path_literals(tree: ast.AST, from_paths: set[str]) -> list[int]:
    """Lines building a path from a string: Path("..."), or a paths constant joined with "...";"""
    lines = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Path"
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            lines.append(node.lineno)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant):
            left = node.left
            if (isinstance(left, ast.Attribute) and isinstance(left.value, ast.Name) and left.value.id == "paths"
                    or isinstance(left, ast.Name) and left.id in from_paths):
                lines.append(node.lineno)
    return lines


def test_every_path_the_pipeline_uses_comes_from_paths_py():
    found = {}
    for path in LIBRARY_AND_STAGES:
        if path.name == "paths.py":
            continue
        tree = ast.parse(path.read_text())
        from_paths = {alias.asname or alias.name for node in ast.walk(tree)
                      if isinstance(node, ast.ImportFrom) and node.module == "memqa.paths" for alias in node.names}
        if lines := _path_literals(tree, from_paths):
            found[str(path.relative_to(REPO))] = lines
    assert not found, f"path literals outside memqa/paths.py (name them there): {found}"


def test_path_literal_check_bites():
    assert _path_literals(ast.parse('Path("data/eval")'), set()) == [1]
    assert _path_literals(ast.parse('paths.METRICS / "verdicts.json"'), set()) == [1]
    assert _path_literals(ast.parse('METRICS / "verdicts.json"'), {"METRICS"}) == [1]
    assert _path_literals(ast.parse('paths.METRICS / model'), set()) == []


def test_no_library_file_over_300_lines_and_no_function_over_60():
    long_files = {str(p.relative_to(REPO)): n for p in (REPO / "memqa").rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > 300}
    long_functions = {}
    for path in LIBRARY_AND_STAGES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60:
                long_functions[f"{path.relative_to(REPO)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long_files and not long_functions, (long_files, long_functions)


def test_every_library_package_is_installed():
    """pyproject.toml lists the packages by name: a new subpackage left out would be missing from a wheel."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "memqa").rglob("__init__.py")}
    assert found == listed
