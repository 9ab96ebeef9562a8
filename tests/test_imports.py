"""Straight imports (docs/architecture.md): reading results needs no torch, and no module takes another
module's underscore name. The layers themselves are import-linter contracts (pyproject.toml, .ci/run)."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "gradtrust").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def private_name_imports() -> set[tuple[str, str, str]]:
    """(importer, module, name) for every ``from gradtrust.x import _name`` of a name (not a submodule)
    defined in another module, at any depth of the importing file (functions included)."""
    modules = _modules()
    found = set()
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and target in modules and f"{target}.{alias.name}" not in modules and target != name:
                    found.add((name, target, alias.name))
    return found


def test_no_module_imports_another_modules_private_name():
    assert private_name_imports() == set()


def test_the_private_name_check_sees_function_level_imports(tmp_path, monkeypatch):
    package = tmp_path / "gradtrust"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("_SECRET = 1\n")
    (package / "b.py").write_text("def f():\n    from gradtrust.a import _SECRET\n    return _SECRET\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert private_name_imports() == {("gradtrust.b", "gradtrust.a", "_SECRET")}


def test_reading_results_imports_no_torch():
    code = "import gradtrust.reporting, gradtrust.evaluation, sys; assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
